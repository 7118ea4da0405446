"""Download a Hugging Face model at its pinned revision into resources/ (on the submitting host)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import fetch, logs

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
out = fetch.hub_snapshot(sm.params.repo_id, sm.params.revision, sm.output[0])
size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
log.info("%s at %s: %d MB in %s", sm.params.repo_id, sm.params.revision, size >> 20, out)
