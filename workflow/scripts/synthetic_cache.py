"""Draw a synthetic model with known point features and low-rank groups; write its caches."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs, synthetic

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
spec = synthetic.SyntheticSpec.from_config(sm.params.spec)
truth = synthetic.generate(spec, sm.output.train, sm.output.eval, sm.output.truth,
                           name=sm.wildcards.model, hook=sm.wildcards.hook)
log.info("%d point features and %d groups (ranks %s) in d=%d", len(truth.points),
         len(truth.groups), spec.group_ranks, spec.d)
