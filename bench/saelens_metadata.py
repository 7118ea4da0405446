"""Does SAELens read what an SAE was trained on from our cfg.json?

Loads SAEs with SAELens's ``SAE.load_from_disk`` in ``bench/.venv-saelens`` (see ``make bench``)
and prints the model, hook, context size, prepend-BOS and dataset that SAELens reports in
``sae.cfg.metadata``. The SAEs are those of a finished default run (``results/``, seed 0 of each
configuration) when there is one; otherwise one random TopK SAE is saved and annotated with the
provenance the default configuration's cache would record (its model, tokens and corpus).

Usage: python bench/saelens_metadata.py [SAE_DIR ...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import metadata  # noqa: E402
from saestab.config import validate_config  # noqa: E402
from saestab.sae import SAE, SAEConfig, save_sae  # noqa: E402

SAELENS_PY = REPO / "bench" / ".venv-saelens" / "bin" / "python"
FIELDS = ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path")
RUNNER = f"""
import sys
from sae_lens import SAE
for d in sys.argv[1:]:
    sae = SAE.load_from_disk(d, device="cpu")
    m = sae.cfg.metadata
    print(d)
    for field in {FIELDS!r}:
        print(f"  {{field:<13}} {{getattr(m, field)!r}}")
"""


def default_run_saes() -> list[str]:
    """Seed 0 of every configuration of a finished default run, if there is one."""
    return sorted(str(p.parent) for p in (REPO / "results").glob("*/*/*/saes/*/group0/seed0/"
                                                                 "cfg.json"))


def annotated_example(tmp: Path) -> str:
    """A random TopK SAE with the provenance the default configuration records."""
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    (key, spec), = cfg["models"].items()
    header = {"model": key, "hook": spec["hooks"][0], "weights": "trained",
              "provenance": metadata.provenance(spec, key, cfg["tokens"], cfg["corpus"])}
    sae = SAE(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8, model_name=key,
                        hook_name=spec["hooks"][0]))
    with torch.no_grad():
        for t in sae.state_tensors().values():
            t.normal_(generator=torch.Generator().manual_seed(0))
    out = save_sae(sae, tmp / "example")
    metadata.annotate_cfg_json(out, header)
    return str(out)


def main() -> None:
    if not SAELENS_PY.is_file():
        raise SystemExit(f"{SAELENS_PY} not found: run `make bench` once to create it")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = sys.argv[1:] or default_run_saes() or [annotated_example(Path(tmp))]
        subprocess.run([str(SAELENS_PY), "-c", RUNNER, *dirs], check=True)


if __name__ == "__main__":
    main()
