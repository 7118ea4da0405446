"""Mask stable / unstable / mass- and energy-matched / null / random feature sets of the anchor
SAEs of one configuration (sets chosen on train-split statistics): ΔEV on the eval cache, ΔCE and
KL with the reconstruction spliced into the model on eval contexts sampled across documents."""

import os
import sys
from pathlib import Path

# The model's files were fetched on the submitting host (fetch_model, fetch_hub_model); this job
# reads them with the hub switched off, which only works if set before any HF library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
import numpy as np

from saestab import census, io, logs, masking, models, runtime, stability, tokens
from saestab.activations import ActivationCache

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.job_device(sm.config)
cfg = sm.params.cfg
seeds = census.seed_map(sm.input.groups)
anchors = sorted(seeds)[: cfg["n_anchors"]]
cache = ActivationCache.open(sm.input.eval)
runners, contexts, picked = None, None, None
if cfg["ce_contexts"] > 0:
    model_dir = models.fetched_dir(sm.input.model)
    model = models.load_model(sm.params.spec, sm.wildcards.weights,
                              random_seed=sm.params.random_seed, device=device,
                              model_dir=model_dir, name=sm.wildcards.model)
    runners = masking.bridge_runners(model.bridge, sm.wildcards.hook)
    token_contexts, doc_ids = tokens.load_tokens(sm.input.tokens, "eval")
    if token_contexts.shape != cache.contexts().shape:
        raise io.InputError(f"{sm.input.eval}: its contexts {cache.contexts().shape} are not the "
                            f"eval contexts of {sm.input.tokens} {token_contexts.shape}; rerun "
                            "the rule cache_activations")
    picked = tokens.sample_contexts_by_document(doc_ids, cfg["ce_contexts"], sm.params.seed)
    contexts = np.asarray(cache.contexts()[picked])
    owners = tokens.context_documents(doc_ids)[picked]
    log.info("spliced loss on %d eval contexts from %d documents", len(picked),
             len(set(owners[owners >= 0].tolist())))
table, summary = masking.run_masking(
    seeds, stability.read_table(sm.input.features), cache, anchors=anchors, runners=runners,
    ce_contexts=contexts, outlier_threshold=cache.header["dropped"].get("outlier_threshold"),
    seed=sm.params.seed, batch_size=runtime.setting(sm.config, "function.masking.batch_size"),
    ce_batch_size=runtime.setting(sm.config, "function.masking.ce_batch_size"),
    device=device, source=str(sm.input.features))
summary["ce_contexts"] = 0 if contexts is None else len(contexts)
summary["ce_context_indices"] = [] if picked is None else picked.tolist()
summary["ce_documents"] = (0 if picked is None else
                           len(set(owners[owners >= 0].tolist())))
stability.write_table(table, sm.output.table)
io.write_json(sm.output.summary, summary)
c3 = summary["c3"]
for name, block in (("mass-matched", c3["mass"]), ("energy-matched", c3["energy"]),
                    ("null, mass-matched", c3["null"]["mass"]),
                    ("null, energy-matched", c3["null"]["energy"])):
    r = block["delta_ev"]["ratio"]
    log.info("ΔEV ratio %s: %.3f [%.3f, %.3f] over %d anchors (jackknife)", name, r["mean"],
             r["ci_low"], r["ci_high"], r["n"])
