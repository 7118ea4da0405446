"""Activation statistics, surface-form measures and top contexts of the anchor SAEs of one
configuration, compared by stability label; an HTML browser of sampled features."""

import os
import sys
from pathlib import Path

# The model's files were fetched on the submitting host (fetch_model, fetch_hub_model); this job
# reads them with the hub switched off, which only works if set before any HF library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import evaluation, io, logs, models, runtime, stability, surface
from saestab.activations import ActivationCache

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
cfg = sm.params.cfg
scans = evaluation.read_scans(sm.input.scan)  # every seed's pass over the split (scan_features)
model_dir = models.fetched_dir(sm.input.model)
tokenizer = models.load_tokenizer(sm.params.spec, model_dir)
res = surface.run_surface(
    {}, stability.read_table(sm.input.features), ActivationCache.open(sm.input.cache),
    tokenizer, anchors=sorted(scans)[: cfg["n_anchors"]], top_k=cfg["top_k"],
    single_token_share=cfg["single_token_share"], n_bins=cfg["frequency_bins"],
    n_browse=cfg["browse_features"], n_contexts=cfg["browse_contexts"], seed=sm.params.seed,
    split=cfg["split"], scans=scans)
res.summary["split"] = cfg["split"]
stability.write_table(res.features, sm.output.features)
stability.write_table(res.comparison, sm.output.comparison)
stability.write_table(res.contexts, sm.output.contexts)
io.write_json(sm.output.summary, res.summary)
w = sm.wildcards
shown = res.features.rename(columns={"seed": "anchor"})
shown = shown.merge(res.contexts[["anchor", "feature"]].drop_duplicates(), on=["anchor", "feature"])
page = surface.browser_html(res.contexts, shown, f"{w.model} {w.weights} {w.hook} {w.variant}",
                            meta={"split": cfg["split"], "top contexts per feature":
                                  cfg["browse_contexts"], "anchors": res.summary["anchors"]})
with io.atomic_path(sm.output.browser) as tmp:
    Path(tmp).write_text(page, encoding="utf-8")
s = res.summary
log.info("single-token share stable %.3f, unstable %.3f", s["single_token_stable"]["mean"],
         s["single_token_unstable"]["mean"])
for key in ("frequency_ratio", "binned_top_token_share_diff"):
    real, null = s["c4"][key]["interval"], s["c4"]["null"][key]["interval"]
    log.info("%s: %.3f [%.3f, %.3f]; shuffled-label null %.3f [%.3f, %.3f] (jackknife over %d "
             "anchors)", key, real["mean"], real["ci_low"], real["ci_high"], null["mean"],
             null["ci_low"], null["ci_high"], real["n"])
