"""Dequantise a GGUF model once into a transformers directory that every later job loads fast."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # a GGUF file carries everything; set before HF imports

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import logs, models

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
models.convert_gguf(sm.params.spec, models.fetched_dir(sm.input), sm.output[0],
                    name=sm.wildcards.model)
