# Seed stability of sparse-autoencoder features: which features reappear across training seeds,
# and what are the others? Entry point of the workflow; see README.md.
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: torch's default busy-waiting lets two jobs (or a
# job and anything else) on the same cores slow each other down many-fold. Jobs inherit this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# config.yaml is the default; a study passed with --configfile replaces it whole (a study's
# model list must not be merged with the default's), while --config key=value still overrides.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# The library lives in workflow/saestab; `make` installs it, this line also serves a plain checkout.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from saestab.config import ConfigError, validate_config

try:
    _validated = validate_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_validated)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/function.smk"
include: "workflow/rules/pool.smk"
include: "workflow/rules/autointerp.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        all_targets(),
