"""Mask stable / unstable / mass-matched / random feature sets of the anchor SAEs of one
configuration: ΔEV on the eval cache, ΔCE and KL with the reconstruction spliced into the model."""

import os
import sys
from pathlib import Path

# The model's files were fetched on the submitting host (fetch_model, fetch_hub_model); this job
# reads them with the hub switched off, which only works if set before any HF library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
import numpy as np

from saestab import census, io, logs, masking, models, runtime, stability
from saestab.activations import ActivationCache

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.job_device(sm.config)
cfg = sm.params.cfg
seeds = census.seed_map(sm.input.groups)
anchors = sorted(seeds)[: cfg["n_anchors"]]
cache = ActivationCache.open(sm.input.eval)
runners, contexts = None, None
if cfg["ce_contexts"] > 0:
    model_dir = models.fetched_dir(sm.input.model)
    model = models.load_model(sm.params.spec, sm.wildcards.weights,
                              random_seed=sm.params.random_seed, device=device,
                              model_dir=model_dir, name=sm.wildcards.model)
    runners = masking.bridge_runners(model.bridge, sm.wildcards.hook)
    contexts = np.asarray(cache.contexts()[: cfg["ce_contexts"]])
table, summary = masking.run_masking(
    seeds, stability.read_table(sm.input.features), cache, anchors=anchors, runners=runners,
    ce_contexts=contexts, outlier_threshold=cache.header["dropped"].get("outlier_threshold"),
    seed=sm.params.seed, batch_size=runtime.setting(sm.config, "function.masking.batch_size"),
    ce_batch_size=runtime.setting(sm.config, "function.masking.ce_batch_size"),
    device=device)
summary["ce_contexts"] = 0 if contexts is None else len(contexts)
stability.write_table(table, sm.output.table)
io.write_json(sm.output.summary, summary)
c = summary["stable_vs_unstable_matched"]["delta_ev"]["difference"]
log.info("ΔEV(stable matched) - ΔEV(unstable matched) = %.4f [%.4f, %.4f] over %d anchors; "
         "count ratio %.2f", c["mean"], c["ci_low"], c["ci_high"], c["n"],
         summary["matched"]["count_ratio"]["mean"])
