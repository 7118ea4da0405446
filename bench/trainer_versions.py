"""Training step time of this checkout's trainer against another checkout's, per architecture.

Usage:
    git worktree add /tmp/base main        # or: git archive main workflow | tar -x -C /tmp/base
    .venv/bin/python bench/trainer_versions.py /tmp/base/workflow [--seeds 6] [--steps 20]

Each measurement is one ``train_group`` call of S seeds (default shape d = 576, m = 1152,
k = 32, batch 512) in a fresh subprocess whose ``sys.path`` starts with the given ``workflow``
directory, so the two versions never share a process. The median of the step times after the
third step is reported; the two sides alternate ``--repeats`` times and the best of each is
compared, because the machine may be shared. With ``--decode dense`` this checkout is also timed
without its CSR path (TopK and BatchTopK), the comparison that justifies keeping that path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in the subprocess: times one train_group call with either trainer API (a RunOptions
# object since the trainer was split into stages; keyword arguments before).
_CHILD = r"""
import json, logging, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
torch.set_num_threads(int(sys.argv[6]))
from saestab import training
from saestab.activations import ActivationCache
logging.getLogger("saestab").setLevel(logging.WARNING)
arch, decode, seeds, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cache = ActivationCache.open(sys.argv[7])
kw = dict(architecture=arch, d_sae=int(sys.argv[8]), k=int(sys.argv[9]), batch_size=512,
          n_tokens=steps * 512, warmup_steps=10, dead_steps=4)
if decode != "auto":
    kw["decode"] = decode
stamps = []
cb = lambda _: stamps.append(time.perf_counter())
cfg = training.TrainConfig(**kw)
if hasattr(training, "RunOptions"):
    training.train_group(cache, cfg, list(range(seeds)), 0,
                         training.RunOptions(snapshots_at_epochs=(), callback=cb))
else:
    training.train_group(cache, cfg, list(range(seeds)), 0, snapshots_at_epochs=(), callback=cb)
print(json.dumps({"ms_per_step": 1000 * float(np.median(np.diff(stamps)[3:]))}))
"""


def time_steps(src: Path, arch: str, decode: str, args: argparse.Namespace, cache: Path) -> float:
    """Median milliseconds per training step of S seeds with the trainer under ``src``."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-c", _CHILD, str(src), arch, decode, str(args.seeds),
           str(args.steps), str(args.threads), str(cache), str(args.m), str(args.k)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{src} {arch} {decode}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return float(json.loads(p.stdout.strip().splitlines()[-1])["ms_per_step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("baseline", help="the other checkout's workflow/ directory")
    ap.add_argument("--archs", default="topk,batchtopk,relu,jumprelu,matryoshka")
    ap.add_argument("--decode", default="auto", help="also time this checkout with this decode")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--m", type=int, default=1152)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO / "workflow"))
    from train_throughput import synthetic_cache

    sides = {"baseline": Path(args.baseline).resolve(), "this": REPO / "workflow"}
    with tempfile.TemporaryDirectory(prefix="trainer_versions-") as tmp:
        cache = Path(tmp) / "train"
        synthetic_cache(cache, 40_000, 576, seed=1)
        print(f"S={args.seeds} d=576 m={args.m} k={args.k} batch=512 threads={args.threads}; "
              f"ms per step (all seeds), best of {args.repeats}; load {os.getloadavg()[0]:.1f}")
        for arch in args.archs.split(","):
            best: dict[str, float] = {}
            runs = [("baseline", "auto"), ("this", "auto")]
            if args.decode != "auto":
                runs.append(("this", args.decode))
            for _ in range(args.repeats):
                for side, decode in runs:
                    key = side if decode == "auto" else f"this ({decode})"
                    ms = time_steps(sides[side], arch, decode, args, cache)
                    best[key] = min(best.get(key, float("inf")), ms)
            extra = "".join(f"  {k} {v:7.1f}" for k, v in best.items()
                            if k not in ("baseline", "this"))
            print(f"{arch:<11} baseline {best['baseline']:7.1f}  this {best['this']:7.1f}  "
                  f"this/baseline {best['this'] / best['baseline']:.3f}{extra}", flush=True)


if __name__ == "__main__":
    main()
