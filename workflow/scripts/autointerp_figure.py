"""Figure of the auto-interp stage across every configuration of the study."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs
from saestab.plotting import autointerp as figures

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
figures.surface_share(sm.params.configs, sm.output.png)
log.info("wrote %s and %s", sm.output.png, sm.output.vector)
