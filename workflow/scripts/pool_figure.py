"""Feature-pool figure and table across every pooled configuration."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import io, logs
from saestab.plotting import pool

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
pool.pool_stability(sm.params.configs, sm.output.figure)
df = pool.pool_table(sm.params.configs)
with io.atomic_path(sm.output.csv) as tmp:
    df.to_csv(tmp, index=False)
with io.atomic_path(sm.output.md) as tmp:
    tmp.write_text(pool.pool_table_markdown(df))
log.info("wrote %s, %s, %s", sm.output.figure, sm.output.vector, sm.output.md)
