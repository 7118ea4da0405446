"""ReLU+L1 training step: the dense matmuls against the sparse path, by training L0.

Baseline: the same model with ``decode: dense``. Both compute the same loss and gradients
(tests/test_training.py::test_relu_sparse_path_matches_dense); the sparse path decodes through
the positive entries and folds the L1 gradient into the compiled backward pass. For each L0
(set through a common shift of ``b_enc``), six seeds at the default shapes (d = 576, m = 1,152,
batch 512) take forward + backward steps alternately with either path in one process, and the
bench prints the median step of each and their ratio (> 1: the sparse path is faster). It needs
no cache (Gaussian inputs). The ratio near 1 locates ``ReLU.SPARSE_MAX_L0_SHARE``.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/relu_sparse.py [--threads 1] [--steps 12]
       [--l0 32 64 115 230]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from saestab.training import TrainConfig  # noqa: E402

S, B, D, M = 6, 512, 576, 1152


def model(decode: str, l0: float, x: torch.Tensor) -> torch.nn.Module:
    """Six ReLU seeds whose pre-activations on ``x`` have about ``l0`` positives per row; the
    controller's L0 buffer is set so that the sparse model takes its sparse path."""
    cfg = TrainConfig(architecture="relu", d_sae=M, decode=decode, l1_coefficient=0.2,
                      l1_warmup_steps=1).resolved(D, 10**6, torch.device("cpu"))
    mod = cfg.arch(cfg, D, S)
    for i in range(S):
        mod.init_seed(i, i, torch.zeros(D))
    with torch.no_grad():
        pre = mod.pre_activations(x)[0].flatten()
        mod.b_enc -= torch.quantile(pre[: 1 << 20], 1 - l0 / M)
    mod.l0_ema.fill_(1.0)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--l0", type=float, nargs="+", default=[32, 64, 115, 230])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    print(f"ReLU+L1 step (forward + backward), {S} seeds, d={D}, m={M}, batch {B}, "
          f"{args.threads} thread(s); median of {args.steps - 2} steps after 2 warm-up")
    print(f"{'L0':>6} {'share':>6} {'dense ms':>9} {'sparse ms':>10} {'ratio':>6}")
    for l0 in args.l0:
        mods = {d: model(d, l0, x) for d in ("dense", "sparse")}
        times: dict[str, list[float]] = {d: [] for d in mods}
        measured = 0.0
        for _ in range(args.steps):
            for d, mod in mods.items():
                t = time.perf_counter()
                out = mod.training_loss(x, step=10)
                out.loss.backward()
                times[d].append(time.perf_counter() - t)
                mod.zero_grad(set_to_none=True)
                measured = float(out.l0.mean())
        dense, sparse = (statistics.median(times[d][2:]) for d in ("dense", "sparse"))
        print(f"{measured:6.1f} {measured / M:6.3f} {dense * 1e3:9.1f} {sparse * 1e3:10.1f} "
              f"{dense / sparse:6.2f}")


if __name__ == "__main__":
    main()
