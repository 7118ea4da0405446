"""Do SAELens's own loader and forward pass read our saved SAEs the way we do?

Saves one random SAE per variant with ``saestab.sae.save_sae``, loads each with SAELens's
``SAE.load_from_disk`` in ``bench/.venv-saelens`` (see ``make bench``) and prints the largest
difference between SAELens's reconstruction and ours on the same inputs.

Usage: python bench/saelens_compat.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab.sae import ARCHITECTURES, SAE, SAEConfig, save_sae  # noqa: E402

SAELENS_PY = REPO / "bench" / ".venv-saelens" / "bin" / "python"
RUNNER = """
import sys, torch
from sae_lens import SAE
for d in sys.argv[1:]:
    sae = SAE.load_from_disk(d, device="cpu")
    x = torch.load(d + "/x.pt", weights_only=True)
    ref = torch.load(d + "/ref.pt", weights_only=True)
    with torch.no_grad():
        diff = float((sae(x) - ref).abs().max())
    print(f"{d.rsplit('/', 1)[-1]:<11} {type(sae).__name__:<14} {diff:.3g}")
"""


def main() -> None:
    if not SAELENS_PY.is_file():
        raise SystemExit(f"{SAELENS_PY} not found: run `make bench` once to create it")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for arch in ARCHITECTURES:
            k = 8 if arch in ("topk", "batchtopk", "matryoshka") else None
            sae = SAE(SAEConfig(architecture=arch, d_in=64, d_sae=128, k=k))
            with torch.no_grad():
                for name, t in sae.state_tensors().items():
                    t.copy_(0.3 * torch.randn(t.shape, generator=g)
                            + (0.2 if name == "threshold" else 0.0))
            out = Path(tmp) / arch
            save_sae(sae, out)
            torch.save(x, out / "x.pt")
            with torch.no_grad():
                torch.save(sae(x), out / "ref.pt")
            dirs.append(str(out))
        print(f"{'variant':<11} {'SAELens class':<14} max |x_hat(SAELens) - x_hat(ours)|")
        subprocess.run([str(SAELENS_PY), "-c", RUNNER, *dirs], check=True)


if __name__ == "__main__":
    main()
