"""One pass of every SAE of a configuration over a cache split: per-feature statistics and the
rows of each feature's strongest activations, shared by the census and the surface statistics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import census, evaluation, logs, runtime
from saestab.activations import ActivationCache
from saestab.sae import load_sae

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.job_device(sm.config)
cache = ActivationCache.open(sm.input.cache)
# one pass over the cache for all seeds: each batch is read once
scans = evaluation.scan_saes(
    {seed: load_sae(d) for seed, d in census.seed_map(sm.input.groups).items()}, cache,
    top_k=sm.params.top_k, max_tokens=sm.params.max_tokens,
    batch_size=runtime.setting(sm.config, "sae.eval_batch_size"), device=device)
for seed, scan in scans.items():
    r = scan.evaluation()
    log.info("seed %d on %s: EV %.4f, L0 %.1f, dead %.3f over %d tokens", seed,
             sm.wildcards.split, r["ev"], r["l0"], r["dead_fraction"], r["n_tokens"])
evaluation.write_scans(scans, sm.output[0])
