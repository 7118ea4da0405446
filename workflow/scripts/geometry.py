"""Subspaces of the unstable features of one SAE configuration (C5)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs, runtime, subspaces

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
p = sm.params.geometry
g = subspaces.run_geometry(
    sm.input.groups, sm.input.features, sm.input.eval, energy=p["energy"],
    max_pairs=p["max_pairs"], max_rows=p["max_rows"], count_fractions=p["count_fractions"],
    min_frequency=p["min_frequency"], min_features=p["min_features"],
    n_bootstrap=p["n_bootstrap"], seed=p["seed"],
    device=str(runtime.job_device(sm.config)),
)
subspaces.write_geometry(g, Path(sm.output.summary).parent)
t = g.summary["transfer"].get("directions", {})
if "cross" in t:
    log.info("directions: cross %.3f, within %.3f, PCA %.3f, random %.3f (r ~ %.0f of d=%d)",
             t["cross"]["mean"], t["within"]["mean"], t["pca"]["mean"], t["random"]["mean"],
             g.summary["r_half_mean"], g.summary["d"])
