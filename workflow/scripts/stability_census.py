"""Stability census of one SAE configuration (all seeds, all groups)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import census, evaluation, logs, runtime

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
cfg = sm.params.stability
device = str(runtime.job_device(sm.config))
c = census.run_census(sm.input.groups, theta=cfg["theta"], eps=cfg["eps"], thetas=cfg["thetas"],
                      epss=cfg["epss"], n_draws=cfg["n_draws"],
                      hungarian_pairs=cfg["hungarian_pairs"], seed=cfg["seed"], device=device,
                      chunk_size=runtime.setting(sm.config, "stability.chunk_size"),
                      train_scans=evaluation.read_scans(sm.input.train_scan),
                      convergence_threshold=cfg["convergence_threshold"])
census.write_census(c, Path(sm.output.summary).parent)
s = c.summary
j = s["seed_level"]["claim"]
log.info("live features: stable %.3f [%.3f, %.3f], unstable %.3f [%.3f, %.3f] (jackknife over %d "
         "seeds); dead %.3f; Hungarian IoU %.3f; EV %.3f; %s", j["stable"]["mean"],
         j["stable"]["ci_low"], j["stable"]["ci_high"], j["unstable"]["mean"],
         j["unstable"]["ci_low"], j["unstable"]["ci_high"], s["n_seeds"], s["dead"]["mean"],
         s["hungarian_iou"]["mean"], s["ev"]["mean"], s["convergence"]["status"])
