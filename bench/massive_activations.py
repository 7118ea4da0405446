"""Training health on "massive activations": dead latents, decoder movement and EV per recipe.

Many LM residual streams have one dimension with a large mean that carries most of E||x||^2 and
a large share of the variance (in a held-out small LM, d = 640: ~2/3 of the variance, 92% of
E||x||^2 along the mean; there the former default TopK recipe left ~77% of the latents dead and
ReLU decoders ended at cosine 0.98 to their initialisation). This bench draws a synthetic cache
with that shape (``saestab.synthetic``: 2d random unit directions in d dimensions, each firing
on 3% of the tokens, plus coordinate 0 = ``--massive-mean`` + ``--massive-std`` * N(0, 1)),
trains ``--seeds`` seeds of each recipe on it and prints, per recipe and averaged over seeds:
the dead share on the train split (latents that never fire there, the health gate's
definition), the median cosine of decoder rows to their initialisation, EV on the train and
eval splits, and L0.

Recipes: ``config.yaml``'s ``topk`` variant with m = 2d and k = ``--k`` (32 of 576 there), under
the former defaults (inputs scaled to E||x||^2 = 1, AuxK dead window 2^17 tokens), each change
alone, and the current defaults (unit variance, 2^15-token window); then the ``relu`` variant,
former (E||x||^2 = 1, L1 coefficient 0.07 at d = 576) and current (unit variance, 0.1), each
coefficient carried to this d by the library's 1/sqrt(d) rule.

Usage: .venv/bin/python bench/massive_activations.py [--d 128] [--seeds 2] [--epochs 8]
    [--massive-mean 17] [--massive-std 4.2] [--no-relu]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import io, synthetic, training  # noqa: E402
from saestab.activations import ActivationCache  # noqa: E402
from saestab.evaluation import evaluate_sae  # noqa: E402
from saestab.logs import setup  # noqa: E402
from saestab.sae import load_sae  # noqa: E402

FORMER = {"normalize": "mean_sq_norm", "dead_window_tokens": 2**17}
RECIPES: list[tuple[str, str, dict[str, Any]]] = [
    ("topk", "former defaults: E||x||^2 = 1, dead window 2^17 tokens", FORMER),
    ("topk", "unit variance only", {"normalize": "variance", "dead_window_tokens": 2**17}),
    ("topk", "2^15-token dead window only", {"normalize": "mean_sq_norm"}),
    ("topk", "current defaults: unit variance, dead window 2^15 tokens", {}),
    ("relu", "relu, former: E||x||^2 = 1, L1 0.07 at d = 576",
     {"normalize": "mean_sq_norm", "l1_coefficient": 0.07}),
    ("relu", "relu, current: unit variance, L1 0.1 at d = 576", {}),
]


def recipe(variant: str, d: int, k: int, epochs: float, change: dict[str, Any]
           ) -> training.TrainConfig:
    base = dict(yaml.safe_load((REPO / "config.yaml").read_text())["sae"]["variants"][variant])
    base.update(d_sae=2 * d, n_epochs=epochs)
    change = dict(change)
    if variant == "topk":
        base["k"] = k
    else:  # the config's coefficient is for d = 576
        l1 = change.pop("l1_coefficient", base["l1_coefficient"])
        base["l1_coefficient"] = l1 * math.sqrt(576 / d)
    window = change.pop("dead_window_tokens", None)
    if window is not None:
        change["dead_steps"] = max(1, round(window / base.get("batch_size", 512)))
    return training.TrainConfig(**{**base, **change})


def measure(cfg: training.TrainConfig, seeds: list[int], train: ActivationCache,
            held: ActivationCache, work: Path) -> dict[str, float]:
    dirs = [work / f"seed{s}" for s in seeds]
    t0 = time.perf_counter()
    training.train_group(train, cfg, seeds, 0, training.RunOptions(
        out_dirs=dirs, snapshots_at_epochs=(), log_every=10**9))
    seconds = time.perf_counter() - t0
    rows = []
    for d in dirs:
        sae = load_sae(d)
        on_train = evaluate_sae(sae, train)
        rows.append({"dead": float(np.mean(on_train["frequency"] == 0)),
                     "init_cos": io.read_json(d / "training.json")["decoder_init_cosine_median"],
                     "train_ev": on_train["ev"], "eval_ev": evaluate_sae(sae, held)["ev"],
                     "l0": on_train["l0"]})
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["dead_max"] = max(r["dead"] for r in rows)
    out["seconds"] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--massive-mean", type=float, default=17.0)
    ap.add_argument("--massive-std", type=float, default=4.2)
    ap.add_argument("--no-relu", action="store_true")
    args = ap.parse_args()
    setup(None, level=logging.WARNING)
    spec = synthetic.SyntheticSpec(d=args.d, n_points=2 * args.d, point_prob=0.03,
                                   massive_mean=args.massive_mean, massive_std=args.massive_std,
                                   n_train=65536, n_eval=8192, seed=0)
    with tempfile.TemporaryDirectory(prefix="massive-") as tmp:
        root = Path(tmp)
        synthetic.generate(spec, root / "train", root / "eval", root / "truth.npz")
        train, held = ActivationCache.open(root / "train"), ActivationCache.open(root / "eval")
        x = train.load(0, train.n_tokens).astype(np.float64)
        var = x.var(0)
        print(f"synthetic cache: d={args.d}, {train.n_tokens} train rows; coordinate 0 carries "
              f"{var[0] / var.sum():.1%} of the variance; "
              f"{1 - train.stats.centered_sq_norm / train.stats.mean_sq_norm:.1%} of E||x||^2 "
              f"lies along the mean")
        print(f"{args.seeds} seeds, {args.epochs:g} epochs; dead = never fires on the train "
              f"split (mean, max over seeds); init cos = median decoder cosine to its init\n")
        print(f"{'recipe':58s} {'dead':>6s} {'max':>6s} {'init cos':>8s} {'EV train':>8s} "
              f"{'EV eval':>8s} {'L0':>6s} {'s':>5s}")
        for i, (variant, name, change) in enumerate(RECIPES):
            if variant == "relu" and args.no_relu:
                continue
            cfg = recipe(variant, args.d, args.k, args.epochs, change)
            r = measure(cfg, list(range(args.seeds)), train, held, root / f"r{i}")
            print(f"{name:58s} {r['dead']:6.3f} {r['dead_max']:6.3f} {r['init_cos']:8.3f} "
                  f"{r['train_ev']:8.3f} {r['eval_ev']:8.3f} {r['l0']:6.1f} "
                  f"{r['seconds']:5.0f}", flush=True)


if __name__ == "__main__":
    main()
