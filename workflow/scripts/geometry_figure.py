"""One geometry figure across every configuration of the study (C5)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs
from saestab.plotting import geometry

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
geometry.FIGURES[sm.wildcards.figure](sm.params.configs, sm.output.png)
log.info("wrote %s and %s", sm.output.png, sm.output.vector)
