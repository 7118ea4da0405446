"""Each SAE variant on a small slice of the real activation cache: L0 against its target, EV.

Trains every architecture for a few epochs on the first ``--tokens`` rows of the SmolLM2 cache
(written by ``make run``) and evaluates it on the eval cache. Every variant has a target L0 of
k: topk exactly; batchtopk and matryoshka at inference through their learned thresholds; relu and
jumprelu through their penalty coefficient, steered to ``target_l0 = k`` during training. The
TopK family and relu should land within +-20% of k on the default slice (relu was at -7% after
one epoch of the full cache, ~300 steps).

JumpReLU learns log-thresholds with Adam, so each moves by about ``lr`` per step; with a target
its thresholds start at the target quantile of the initial pre-activations, but the L0 it holds
after the first few hundred steps still lags (on SmolLM2 about -40% after one epoch, within +-12%
from two epochs on). Give it the default run's budget (``--tokens 150000 --epochs 8``, ~2,300
steps) for a settled L0 (``bench/target_l0.py`` measures exactly that).

Usage: python bench/variant_l0.py [--tokens 40000] [--epochs 4] [--k 32] [--m 1152]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import activations, evaluation, logs, training  # noqa: E402

CACHE = REPO / "results/smollm2/trained/blocks.15.hook_resid_post/cache"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--tokens", type=int, default=40_000)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--m", type=int, default=1152)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logs.setup(None, level=30)
    train = activations.ActivationCache.open(Path(args.cache) / "train")
    ev_cache = activations.ActivationCache.open(Path(args.cache) / "eval")
    n = min(args.tokens, train.n_tokens)
    rows = train.load(0, n)
    with tempfile.TemporaryDirectory() as tmp:
        small = activations.write_cache(
            Path(tmp) / "small", lambda t: torch.from_numpy(rows).view(1, n, -1),
            np.zeros((1, n), dtype=np.int64), d=train.d, bos_token_id=None,
            outlier_factor=None, meta={"source": str(train.path), "rows": n})
        recipes = {
            "topk": dict(k=args.k),
            "batchtopk": dict(k=args.k),
            "matryoshka": dict(k=args.k),
            "relu": dict(target_l0=args.k),
            "jumprelu": dict(target_l0=args.k),
        }
        print(f"{n} training rows x {args.epochs:g} epochs, m={args.m}, eval on "
              f"{ev_cache.n_tokens} rows of {ev_cache.path}")
        print(f"{'variant':<11} {'target L0':>9} {'L0 (eval)':>10} {'L0/target':>9} "
              f"{'EV':>7} {'dead':>6} {'s':>6}")
        for arch, extra in recipes.items():
            cfg = training.TrainConfig(architecture=arch, d_sae=args.m, lr=args.lr,
                                       n_epochs=args.epochs, **extra)
            t = time.perf_counter()
            res = training.train_group(small, cfg, [0], 0,
                                       training.RunOptions(snapshots_at_epochs=()))
            r = evaluation.evaluate_sae(res.saes[0], ev_cache)
            target = args.k
            ratio = f"{r['l0'] / target:9.2f}"
            print(f"{arch:<11} {target:>9} {r['l0']:10.1f} {ratio} {r['ev']:7.3f} "
                  f"{r['dead_fraction']:6.3f} {time.perf_counter() - t:6.0f}")


if __name__ == "__main__":
    main()
