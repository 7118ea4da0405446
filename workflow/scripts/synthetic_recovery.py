"""What the SAEs of a synthetic configuration recovered of the ground truth (C6)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import census, logs, stability, synthetic
from saestab.sae import load_sae

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
dirs = census.seed_dirs(sm.input.groups)
directions = [load_sae(d).decoder_directions().detach().numpy() for d in dirs]
rec = synthetic.recovery(directions, [int(d.name[4:]) for d in dirs],
                         synthetic.read_truth(sm.input.truth),
                         stability.read_table(sm.input.features),
                         assign_threshold=sm.params.assign_threshold, theta=sm.params.theta,
                         eps=sm.params.eps)
synthetic.write_recovery(rec, Path(sm.output.summary).parent)
for row in rec.summary["by_rank"]:
    log.info("%s rank %d: latent p_hat %.2f, truth overlap %.3f, cross-seed overlap %.3f",
             row["kind"], row["rank"], row["latent_p_hat"], row["truth_overlap"],
             row["cross_seed_overlap"])
