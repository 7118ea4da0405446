"""Where the train/eval EV gap of an SAE comes from: the rows it was trained on, held-out contexts
of the same documents, the eval split's documents, and eval tokens grouped by how often their
token occurs in training. Measured in one run, for the trained model and its random-weights
control.

Usage:
    .venv/bin/python bench/memorisation.py [--weights trained random] [--epochs 8] [--seeds 3]

For each weights, every ``--holdout``-th context of the train cache (by context index) is set
aside; ``--seeds`` TopK SAEs with config.yaml's recipe are trained on the rest
(``saestab.activations.write_subset``) and evaluated with one EV formula,
``1 - sum ||x - x_hat||^2 / sum ||x - mean||^2`` (the mean of the rows evaluated), on

- ``fit``: a sample of the rows trained on;
- ``held-out contexts``: the set-aside contexts (same documents, unseen positions);
- ``eval``: the eval split (other documents);
- eval rows whose token occurs 0, 1-9, 10-99 or >= 100 times in the rows trained on (here the
  denominator's mean is the whole eval split's, so the buckets are comparable).

If fit >> held-out contexts, the SAEs memorise contexts; if held-out contexts ~ fit >> eval and
the EV rises steeply with the token's training count, they learn per-token directions that do
not reach tokens rarely or never seen in training.

``--fractions 0.25 0.5 1`` repeats the study on nested random subsets of the training contexts
(that share of them, drawn once) at the same number of optimiser steps (the epochs scaled by
1 / fraction), and prints fit, held-out and eval EV and the fit - eval gap per fraction: if the
gap is memorisation, it shrinks as the number of distinct rows grows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import training  # noqa: E402
from saestab.activations import ActivationCache, write_subset  # noqa: E402
from saestab.sae import SAE  # noqa: E402

RESULTS = REPO / "results/smollm2/{weights}/blocks.15.hook_resid_post/cache"
BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, None, ">=100"))


@torch.no_grad()
def row_errors(sae: SAE, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = []
    for lo in range(0, len(x), chunk):
        xc = torch.from_numpy(x[lo:lo + chunk])
        out.append((xc - sae(xc)).double().pow(2).sum(1).numpy())
    return np.concatenate(out)


def ev(err: np.ndarray, x: np.ndarray, mean: np.ndarray) -> float:
    return 1.0 - float(err.sum()) / float(((x.astype(np.float64) - mean) ** 2).sum())


def study(weights: str, args: argparse.Namespace, recipe: dict, work: Path,
          fraction: float = 1.0) -> dict:
    cache_dir = Path(str(RESULTS).format(weights=weights))
    train = ActivationCache.open(cache_dir / "train")
    held = ActivationCache.open(cache_dir / "eval")
    ctx = np.asarray(train.positions()[:, 0])
    out_rows = ctx % args.holdout == 0
    kept = np.random.default_rng(1).random(int(ctx.max()) + 1) < fraction  # nested subsets
    fit = write_subset(train, np.nonzero(~out_rows & kept[ctx])[0],
                       work / f"{weights}-fit-{fraction:g}")
    cfg = training.TrainConfig(**{**recipe, "n_epochs": float(args.epochs) / fraction})
    res = training.train_group(fit, cfg, list(range(args.seeds)), 0,
                               training.RunOptions(snapshots_at_epochs=()))
    counts = np.bincount(np.asarray(fit.token_ids()), minlength=1 << 20)
    rng = np.random.default_rng(0)
    fit_idx = np.sort(rng.choice(fit.n_tokens, min(fit.n_tokens, args.sample), replace=False))
    parts = {"fit": fit.rows(fit_idx), "held-out contexts": train.rows(np.nonzero(out_rows)[0]),
             "eval": held.load()}
    eval_counts = counts[np.asarray(held.token_ids())]
    eval_mean = parts["eval"].astype(np.float64).mean(0)
    per_seed: dict[str, list[float]] = {}
    for sae in res.saes:
        for name, x in parts.items():
            per_seed.setdefault(name, []).append(ev(row_errors(sae, x), x,
                                                    x.astype(np.float64).mean(0)))
        err = row_errors(sae, parts["eval"])
        for lo, hi, label in BUCKETS:
            sel = (eval_counts >= lo) & (eval_counts <= (hi if hi is not None else np.inf))
            if sel.any():
                per_seed.setdefault(f"eval, token seen {label}", []).append(
                    ev(err[sel], parts["eval"][sel], eval_mean))
    sizes = {"fit": fit.n_tokens, "held-out contexts": int(out_rows.sum()),
             "eval": held.n_tokens}
    for lo, hi, label in BUCKETS:
        sizes[f"eval, token seen {label}"] = int(((eval_counts >= lo) & (
            eval_counts <= (hi if hi is not None else np.inf))).sum())
    return {"ev": {k: (float(np.mean(v)), float(np.std(v))) for k, v in per_seed.items()},
            "rows": sizes, "unique_tokens_fit": int((counts > 0).sum()),
            "eval_rows_unseen_token": float(np.mean(eval_counts == 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", default=["trained", "random"])
    ap.add_argument("--variant", default="topk")
    ap.add_argument("--epochs", type=float, default=8.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=10, help="every n-th context is held out")
    ap.add_argument("--sample", type=int, default=30000, help="fit rows evaluated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fractions", type=float, nargs="+", default=None,
                    help="also train on these shares of the training contexts (same steps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("saestab").setLevel(logging.WARNING)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    recipe = {k: v for k, v in config["sae"]["variants"][args.variant].items()
              if k not in ("n_epochs", "n_tokens", "vary_data_seed")}
    results, shares = {}, {}
    with tempfile.TemporaryDirectory(prefix="memorisation-") as tmp:
        for w in args.weights:
            print(f"{w}: training {args.seeds} seeds for {args.epochs:g} epochs ...", flush=True)
            results[w] = study(w, args, recipe, Path(tmp))
            for f in args.fractions or ():
                if f != 1.0:
                    print(f"{w}: {f:g} of the contexts, {args.epochs / f:g} epochs ...",
                          flush=True)
                shares[w, f] = results[w] if f == 1.0 else study(w, args, recipe, Path(tmp), f)
    print()
    if shares:
        print_fractions(shares, args)
    print(f"{args.variant} recipe of config.yaml, {args.seeds} seeds, {args.epochs:g} epochs on "
          f"the train split less every {args.holdout}th context; EV mean ± sd over seeds")
    names = list(next(iter(results.values()))["rows"])
    print("| rows | " + " | ".join(f"{w}: EV (rows)" for w in results) + " |")
    print("|---|" + "---|" * len(results))
    for n in names:
        cells = []
        for r in results.values():
            m, s = r["ev"].get(n, (float("nan"), float("nan")))
            cells.append(f"{m:.3f} ± {s:.3f} ({r['rows'].get(n, 0)})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    for w, r in results.items():
        print(f"{w}: {r['unique_tokens_fit']} distinct tokens in the rows trained on; "
              f"{100 * r['eval_rows_unseen_token']:.1f}% of eval rows hold a token never seen "
              "there")


def print_fractions(shares: dict, args: argparse.Namespace) -> None:
    print(f"{args.variant} recipe, {args.seeds} seeds, {args.epochs:g} epochs' worth of steps on "
          "a share of the training contexts; EV mean ± sd over seeds")
    print("| weights | share | rows trained on | fit | held-out contexts | eval | fit - eval |")
    print("|---|---|---|---|---|---|---|")
    for (w, f), r in sorted(shares.items()):
        e = r["ev"]
        cells = [f"{e[n][0]:.3f} ± {e[n][1]:.3f}" for n in ("fit", "held-out contexts", "eval")]
        print(f"| {w} | {f:g} | {r['rows']['fit']} | " + " | ".join(cells)
              + f" | {e['fit'][0] - e['eval'][0]:.3f} |")
    print()


if __name__ == "__main__":
    main()
