"""Peak memory and throughput of SAE training as the activation cache grows: the streamed data
path (windows of ``--window`` rows) at 1x, 4x and 16x a base cache size, against the in-memory
path (one window holding the whole cache) on the 1x cache. Ratios measured side by side in one
run on this machine (a benchmark, not a timed test).

Usage:
    .venv/bin/python bench/stream_memory.py [--rows 32768] [--window 16384] [--steps 150]

Each measurement is one ``train_group`` call (TopK, d = 576, m = 1152, k = 32, batch 512,
``--seeds`` seeds, ``--steps`` steps) in a fresh subprocess that reports its own peak resident
set size (``VmHWM``) and training tokens/s per SAE. The caches are synthetic (rows drawn from
a fixed table of 4096 random vectors), written once to a temporary directory; only their size
differs. Throughput alternates the streamed and the in-memory runs ``--repeats`` times and keeps
the best of each, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab.activations import write_cache  # noqa: E402

_CHILD = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[5]))
from saestab import training
from saestab.activations import ActivationCache
logging.getLogger("saestab").setLevel(logging.WARNING)
cache = ActivationCache.open(sys.argv[2])
steps, window, seeds = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
cfg = training.TrainConfig(architecture="topk", d_sae=1152, k=32, batch_size=512,
                           n_tokens=steps * 512, warmup_steps=10, shuffle_window=window)
res = training.train_group(cache, cfg, list(range(seeds)), 0,
                           training.RunOptions(snapshots_at_epochs=()))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": hwm / 1024,
                  "tokens_per_second_per_sae": res.tokens_per_second_per_sae}))
"""


def make_cache(path: Path, n_rows: int, d: int) -> None:
    table = torch.from_numpy(np.random.default_rng(0).standard_normal((4096, d)).astype(
        np.float32))
    t = 128
    ctx = np.random.default_rng(n_rows).integers(0, 4096, (math.ceil(n_rows / t), t))
    write_cache(path, lambda ids: table[ids], ctx, d=d, bos_token_id=None,
                outlier_factor=None, batch_size=256)


def measure(cache: Path, args: argparse.Namespace, window: int) -> dict[str, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-c", _CHILD, str(REPO / "workflow"), str(cache), str(args.steps),
           str(window), str(args.threads), str(args.seeds)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"measurement failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32768, help="rows of the 1x cache")
    ap.add_argument("--window", type=int, default=16384, help="shuffle window of the stream")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = (1, 4, 16)
    with tempfile.TemporaryDirectory(prefix="stream_memory-") as tmp:
        caches = {}
        for f in sizes:
            caches[f] = Path(tmp) / f"x{f}"
            print(f"writing the {f}x cache ({f * args.rows} x {args.d} float32) ...", flush=True)
            make_cache(caches[f], f * args.rows, args.d)
        rss = {}
        for f in sizes:
            rss[f] = measure(caches[f], args, args.window)["peak_rss_mb"]
            print(f"streamed, {f:2d}x cache: peak RSS {rss[f]:7.0f} MB", flush=True)
        in_memory_rss = {}
        for f in (1, 16):
            in_memory_rss[f] = measure(caches[f], args, f * args.rows)["peak_rss_mb"]
            print(f"in memory, {f:2d}x cache: peak RSS {in_memory_rss[f]:7.0f} MB", flush=True)
        streamed, in_memory = [], []
        for r in range(args.repeats):
            streamed.append(measure(caches[1], args, args.window)["tokens_per_second_per_sae"])
            in_memory.append(measure(caches[1], args, args.rows)["tokens_per_second_per_sae"])
            print(f"throughput run {r + 1}: streamed {streamed[-1]:.0f}, in memory "
                  f"{in_memory[-1]:.0f} tokens/s per SAE", flush=True)
    print()
    print(f"cache 1x = {args.rows} rows x d={args.d}; stream window {args.window} rows; "
          f"TopK m=1152 k=32, {args.seeds} seeds, {args.steps} steps of 512; "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}")
    print("| cache | streamed peak RSS (MB) | ratio to 1x | in-memory peak RSS (MB) |")
    print("|---|---|---|---|")
    for f in sizes:
        mem = f"{in_memory_rss[f]:.0f}" if f in in_memory_rss else "–"
        print(f"| {f}x | {rss[f]:.0f} | {rss[f] / rss[1]:.3f} | {mem} |")
    ratio = max(streamed) / max(in_memory)
    print(f"throughput streamed / in memory (1x cache, best of {args.repeats}): "
          f"{max(streamed):.0f} / {max(in_memory):.0f} = {ratio:.3f}")
    worst = max(abs(rss[f] / rss[1] - 1) for f in sizes)
    print(f"largest peak-RSS change from 1x to 16x: {100 * worst:.1f}% (target: within 10%); "
          f"throughput within 10% of in memory: {'yes' if ratio >= 0.9 else 'no'}")


if __name__ == "__main__":
    main()
