"""One figure of the functional / surface-form analysis across every configuration."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs
from saestab.plotting import function

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
function.FIGURES[sm.wildcards.figure](sm.params.configs, sm.output.png)
log.info("wrote %s and %s", sm.output.png, sm.output.vector)
