"""Train one group of seeds of one SAE variant, evaluate each SAE (and its snapshots) on eval."""

import shutil
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
work = Path(p.work_dir)
staging = work / "staging"  # survives a killed job, like the checkpoints
out = Path(sm.output[0])

# Seeds of a group share one pass over the data; with vary_data_seed each seed has its own
# data order, so each is its own pass.
if p.vary_data_seed:
    runs = [([s], p.data_seed + s) for s in p.seeds]
else:
    runs = [(list(p.seeds), p.data_seed)]
summaries = []
for seeds, data_seed in runs:
    result = training.train_group(
        train_cache, cfg, seeds, data_seed,
        out_dirs=[staging / f"seed{s}" for s in seeds], device=device,
        checkpoint_dir=work / f"checkpoint-seeds{'-'.join(map(str, seeds))}",
        checkpoint_every=runtime.setting(sm.config, "sae.checkpoint_every"),
        snapshots_at_epochs=p.snapshots,
    )
    # (the loss curve is in each SAE's training.json; this keeps the job-level timing)
    summaries.append({"init_seeds": seeds, "data_seed": data_seed, "steps": result.steps,
                      "resumed_from": result.resumed_from, "seconds": result.seconds,
                      "tokens_per_second_per_sae": result.tokens_per_second_per_sae})

# Evaluate every saved SAE (final and snapshots) on the eval split, beside its weights.
sae_dirs = sorted(d.parent for d in staging.rglob("cfg.json"))
for d in logs.progress(sae_dirs, desc="evaluating", unit="sae"):
    metadata.annotate_cfg_json(d, train_cache.header)  # HF id, context, dataset for SAELens
    sae = load_sae(d).to(device)
    ev = evaluation.evaluate_sae(sae, eval_cache, device=device,
                                 batch_size=runtime.setting(sm.config, "sae.eval_batch_size"))
    evaluation.write_evaluation(ev, d)
    if d.parent == staging:
        log.info("%s: EV %.4f, L0 %.1f, dead %.3f", d.name, ev["ev"], ev["l0"],
                 ev["dead_fraction"])
io.write_json(staging / "train_summary.json", {"runs": summaries, "recipe": cfg.to_json()})

if out.exists():
    shutil.rmtree(out)
out.parent.mkdir(parents=True, exist_ok=True)
staging.rename(out)
shutil.rmtree(work, ignore_errors=True)
if work.parent.is_dir() and not any(work.parent.iterdir()):
    work.parent.rmdir()  # the variant's .work/ once no group is in progress
