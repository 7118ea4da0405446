"""One forward pass per batch over the train and eval contexts; activations at the hook to disk."""

import os
import sys
from pathlib import Path

# The model's files were fetched on the submitting host (fetch_model, fetch_hub_model); this job
# reads them with the hub switched off, which only works if set before any HF library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import activations, logs, metadata, models, runtime, tokens

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.job_device(sm.config)
cfg = sm.params.cache
model_dir = models.fetched_dir(sm.input.model)
model = models.load_model(sm.params.spec, sm.wildcards.weights, random_seed=sm.params.random_seed,
                          device=device, model_dir=model_dir, name=sm.wildcards.model)
forward = model.forward_fn(sm.wildcards.hook)
bos = model.tokenizer.bos_token_id  # BOS positions never reach the cache
# what every SAE trained on this cache records in its cfg.json (HF id, context, dataset)
provenance = metadata.provenance(sm.params.spec, sm.wildcards.model, sm.params.tokens,
                                 sm.params.corpus)
for split in ("train", "eval"):
    contexts, _ = tokens.load_tokens(sm.input.tokens, split)
    cache = activations.write_cache(
        sm.output[split], forward, contexts, d=model.d_model, bos_token_id=bos,
        batch_size=cfg["batch_size"], outlier_factor=cfg["outlier_factor"], dtype=cfg["dtype"],
        shard_tokens=cfg["shard_tokens"], device=device,
        meta={"model": sm.wildcards.model, "weights": sm.wildcards.weights,
              "hook": sm.wildcards.hook, "split": split, "model_info": model.info,
              "provenance": provenance},
    )
    h = cache.header
    log.info("%s: %d tokens cached (%d BOS and %d outliers dropped), %.0f tokens/s", split,
             cache.n_tokens, h["dropped"]["bos"], h["dropped"]["outliers"],
             h["throughput"]["tokens_per_second"])
