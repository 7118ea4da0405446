"""The Table-1 analogue: stability and reconstruction per configuration (CSV, Markdown, figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import io, logs, plotting

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
df = plotting.table1(sm.params.configs)
with io.atomic_path(sm.output.csv) as tmp:
    df.to_csv(tmp, index=False)
md = plotting.table1_markdown(df)
with io.atomic_path(sm.output.md) as tmp:
    tmp.write_text(md)
plotting.table1_figure(df, sm.output.png)
log.info("\n%s", md)
