"""Train one group of seeds of one SAE variant, evaluate each SAE (and its snapshots) on eval."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import evaluation, io, logs, metadata, runtime, training
from saestab.activations import ActivationCache
from saestab.sae import load_sae

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.job_device(sm.config)
p = sm.params
recipe = {k: v for k, v in p.variant.items() if v is not None and k != "vary_data_seed"}
cfg = training.TrainConfig(**recipe)
train_cache = ActivationCache.open(sm.input.train)
eval_cache = ActivationCache.open(sm.input.eval)
out = Path(sm.output[0])

# Seeds of a group share one pass over the data; with vary_data_seed each seed has its own
# data order, so each is its own pass.
if p.vary_data_seed:
    runs = [([s], p.data_seed + s) for s in p.seeds]
else:
    runs = [(list(p.seeds), p.data_seed)]
job = training.Job(cfg=cfg, runs=runs, snapshots=list(p.snapshots))
training.remove_temporaries(out.parent, out.name)
staging, results = training.train_job(
    train_cache, job, Path(p.work_dir), device=device,
    checkpoint_every=runtime.setting(sm.config, "sae.checkpoint_every"))

# Evaluate every saved SAE (final and snapshots) on the eval split, beside its weights.
manifest = io.read_json(staging / training.MANIFEST)
finals = {staging / f"seed{s}" for s in manifest["seeds"]}
for d in logs.progress(training.manifest_dirs(staging, manifest), desc="evaluating", unit="sae"):
    metadata.annotate_cfg_json(d, train_cache.header)  # HF id, context, dataset for SAELens
    sae = load_sae(d).to(device)
    ev = evaluation.evaluate_sae(sae, eval_cache, device=device,
                                 batch_size=runtime.setting(sm.config, "sae.eval_batch_size"))
    evaluation.write_evaluation(ev, d)
    if d in finals:
        log.info("%s: EV %.4f, L0 %.1f, dead %.3f", d.name, ev["ev"], ev["l0"],
                 ev["dead_fraction"])
# (the loss curve is in each SAE's training.json; this keeps the job-level timing)
summaries = [{"init_seeds": seeds, "data_seed": data_seed, "steps": r.steps,
              "resumed_from": r.resumed_from, "seconds": r.seconds,
              "tokens_per_second_per_sae": r.tokens_per_second_per_sae}
             for (seeds, data_seed), r in zip(runs, results, strict=True)]
io.write_json(staging / "train_summary.json", {"runs": summaries, "recipe": cfg.to_json()})
training.finish_job(staging, out, Path(p.work_dir))
