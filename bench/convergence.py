"""Budget to plateau per training recipe: the stable share of a group of seeds at each
training budget, every budget having finished its own learning-rate decay (warmup-stable-decay
snapshots), and the CPU time each budget cost. Measured in one run on this machine.

Usage:
    .venv/bin/python bench/convergence.py [--recipe batch_size=512,lr=0.004 ...] [--seeds 4]
        [--epochs 1 2 4 8] [--architecture topk] [--cache results/.../cache] [--json out.json]

For each recipe, one ``train_group`` call trains ``--seeds`` seeds of the architecture on the
train cache with snapshots at ``--epochs`` (each a decay branch of the main run, so the point at
budget B is the SAE a run of B would give). Each snapshot is evaluated on the eval cache (EV, L0,
dead share) and the group's stable / unstable shares are computed by the census's own code
(``saestab.census.training_length``; theta and eps from config.yaml). A recipe has plateaued at
the first budget B whose stable share is within ``--tolerance`` (0.02, SPEC's convergence gate)
of the next budget's, 2B; its cost is the CPU seconds the main run took to reach B's fork plus
B's decay branch. A budget whose dead share (eval) exceeds ``--max-dead`` cannot be the plateau:
latents that die also stop the stable share from moving. Recipes share everything but the keys
given (defaults: config.yaml's variant).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab import census, evaluation, io, training  # noqa: E402
from saestab.activations import ActivationCache  # noqa: E402
from saestab.sae import load_sae  # noqa: E402

DEFAULT_CACHE = REPO / "results/smollm2/trained/blocks.15.hook_resid_post/cache"


def parse_recipe(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_recipe(name: str, recipe: dict[str, Any], args: argparse.Namespace, train: ActivationCache,
               held: ActivationCache, work: Path, stab: dict[str, Any]) -> dict[str, Any]:
    cfg = training.TrainConfig(**{**recipe, "n_epochs": float(max(args.epochs))})
    group = work / name / "group0"
    seeds = list(range(args.seeds))
    stamps: dict[int, float] = {}
    t0 = time.perf_counter()
    opts = training.RunOptions(out_dirs=[group / f"seed{s}" for s in seeds],
                               snapshots_at_epochs=tuple(args.epochs),
                               callback=lambda step: stamps.__setitem__(
                                   step, time.perf_counter() - t0))
    res = training.train_group(train, cfg, seeds, 0, opts)
    wall = time.perf_counter() - t0
    training.job.write_manifest(group, seeds, res.snapshot_epochs, {"bench": name})
    for d in training.manifest_dirs(group, io.read_json(group / training.MANIFEST)):
        ev = evaluation.evaluate_sae(load_sae(d), held, batch_size=4096)
        evaluation.write_evaluation(ev, d)
    tl = census.training_length([group], theta=stab["theta"], eps=stab["eps"])
    rcfg = cfg.resolved(train.d, train.n_tokens, torch.device("cpu"))
    spe = train.n_tokens // rcfg.batch_size
    rows = []
    for _, r in tl.sort_values("epoch").iterrows():
        budget = int(r["epoch"]) * spe
        fork = training.decay_fork_step(rcfg, budget)
        # the step callback runs after the branch forked at that step has been trained (the
        # time includes the branches of smaller budgets: this design pays for them too)
        rows.append({"epoch": int(r["epoch"]), "steps": budget, "tokens": budget * rcfg.batch_size,
                     "stable": float(r["stable"]), "unstable": float(r["unstable"]),
                     "ev": float(r["ev"]), "l0": float(r["l0"]),
                     "dead": float(r["dead_fraction"]),
                     "seconds": stamps[fork] if budget != res.steps else wall})
    plateau = None
    for a, b in zip(rows, rows[1:], strict=False):
        # a plateau of unhealthy SAEs is no plateau: dying latents also stop the stable share
        healthy = max(a["dead"], b["dead"]) <= args.max_dead
        if abs(b["stable"] - a["stable"]) <= args.tolerance and healthy:
            plateau = a
            break
    return {"recipe": recipe, "resolved": {k: getattr(rcfg, k) for k in
                                           ("batch_size", "lr", "warmup_steps",
                                            "lr_decay_fraction")},
            "rows": rows, "plateau": plateau, "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", action="append", default=None,
                    help="comma-separated key=value overrides of the variant (repeatable)")
    ap.add_argument("--variant", default="topk", help="config.yaml variant the recipes start from")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--max-dead", type=float, default=None,
                    help="dead share (eval) above which a budget is unhealthy and cannot be the "
                         "plateau (default: config.yaml's summary.health)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("saestab").setLevel(logging.WARNING)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    base = {k: v for k, v in config["sae"]["variants"][args.variant].items()
            if k not in ("n_epochs", "n_tokens", "vary_data_seed")}
    stab = {"theta": config["stability"]["theta"], "eps": config["stability"]["eps"]}
    if args.max_dead is None:
        args.max_dead = config.get("summary", {}).get("health", {}).get("max_dead_fraction", 0.1)
    recipes = args.recipe or ["", "batch_size=128,lr=0.002"]
    train = ActivationCache.open(Path(args.cache) / "train")
    held = ActivationCache.open(Path(args.cache) / "eval")
    results = []
    with tempfile.TemporaryDirectory(prefix="convergence-") as tmp:
        for i, text in enumerate(recipes):
            recipe = {**base, **parse_recipe(text)}
            print(f"recipe {i}: {text or '(variant as in config.yaml)'} ...", flush=True)
            out = run_recipe(f"r{i}", recipe, args, train, held, Path(tmp), stab)
            out["name"] = text or "config.yaml"
            results.append(out)
            for r in out["rows"]:
                print(f"  epoch {r['epoch']:3d}: stable {r['stable']:.3f} unstable "
                      f"{r['unstable']:.3f} EV {r['ev']:.3f} L0 {r['l0']:.1f} dead "
                      f"{r['dead']:.3f} ({r['seconds']:.0f} s)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(f"cache {train.path} ({train.n_tokens} rows); {args.variant}, {args.seeds} seeds; "
          f"budgets {args.epochs} epochs; {args.threads} threads; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| recipe | " + " | ".join(f"stable @{e}" for e in args.epochs) +
          " | plateau (epochs) | CPU s to plateau | EV / L0 / dead at plateau |")
    print("|---|" + "---|" * len(args.epochs) + "---|---|---|")
    for out in results:
        stable = {r["epoch"]: r["stable"] for r in out["rows"]}
        p = out["plateau"]
        at = (f"{p['epoch']} | {p['seconds']:.0f} | {p['ev']:.3f} / {p['l0']:.1f} / "
              f"{p['dead']:.3f}" if p else "not within the budgets | – | –")
        print(f"| {out['name']} | " + " | ".join(f"{stable.get(e, float('nan')):.3f}"
                                                for e in args.epochs) + f" | {at} |")


if __name__ == "__main__":
    main()
