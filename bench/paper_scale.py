"""Training cost of one paper-scale SAE group, measured: tokens/s per SAE, the FLOP rate it
implies, and peak memory, on this machine's CPU and, where one is present, on its GPU.

Usage:
    .venv/bin/python bench/paper_scale.py [--d 768] [--m 16384] [--k 64] [--batch-size 4096]
        [--seeds 1] [--steps 6] [--device cpu cuda]

A synthetic cache of ``--rows`` rows of width d (random rows from a table of 4096 vectors) is
written to a temporary directory; one ``train_group`` call per device trains ``--seeds`` TopK
SAEs for ``--steps`` steps. Reported: the median step time after the first two steps, tokens/s
per SAE (batch * seeds / step time / seeds), the dense-equivalent FLOP rate (12 * d * m per token
per SAE: encoder and decoder, forward and backward), and the process's peak resident memory
(CPU) or peak allocated GPU memory. The compute estimates in ``configs/*.yaml`` quote this
bench's output and the machine it ran on.
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
import json, logging, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from saestab import training
from saestab.activations import ActivationCache
logging.getLogger("saestab").setLevel(logging.WARNING)
cache, device = ActivationCache.open(sys.argv[2]), sys.argv[3]
d, m, k, bs, seeds, steps = (int(a) for a in sys.argv[4:10])
torch.set_num_threads(int(sys.argv[10]))
cfg = training.TrainConfig(architecture="topk", d_sae=m, k=k, batch_size=bs,
                           n_tokens=steps * bs, warmup_steps=1)
stamps = []
def tick(_):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    stamps.append(time.perf_counter())
training.train_group(cache, cfg, list(range(seeds)), 0,
                     training.RunOptions(device=device, snapshots_at_epochs=(), callback=tick))
step = float(np.median(np.diff(stamps)[1:]))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print(json.dumps({"step_seconds": step, "peak_rss_mb": hwm / 1024, "peak_gpu_mb": gpu}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", nargs="+", default=["cpu", "cuda"])
    args = ap.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="paper_scale-") as tmp:
        table = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (4096, args.d)).astype(np.float32))
        ctx = np.random.default_rng(1).integers(0, 4096, (math.ceil(args.rows / 128), 128))
        write_cache(Path(tmp) / "cache", lambda ids: table[ids], ctx, d=args.d,
                    bos_token_id=None, outlier_factor=None, batch_size=64)
        for device in args.device:
            if device.startswith("cuda") and not torch.cuda.is_available():
                print(f"{device}: no GPU on this machine (torch {torch.__version__}, "
                      f"CUDA available: False); not measured")
                continue
            cmd = [sys.executable, "-c", _CHILD, str(REPO / "workflow"), str(Path(tmp) / "cache"),
                   device, str(args.d), str(args.m), str(args.k), str(args.batch_size),
                   str(args.seeds), str(args.steps + 2), str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if p.returncode != 0:
                raise RuntimeError(f"{device} run failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            tps = args.batch_size / r["step_seconds"]
            gflops = 12 * args.d * args.m * tps * args.seeds / 1e9
            rows.append((device, r, tps, gflops))
            print(f"{device}: step {r['step_seconds']:.2f} s, {tps:,.0f} tokens/s per SAE",
                  flush=True)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print()
    print(f"TopK d={args.d} m={args.m} k={args.k}, batch {args.batch_size}, {args.seeds} seed(s) "
          f"stacked, {args.steps} timed steps; CPU: {os.cpu_count()} cores, {args.threads} "
          f"threads; GPU: {name}; load average {os.getloadavg()[0]:.1f}")
    print("| device | tokens/s per SAE | dense-equivalent GFLOP/s | peak host RSS (MB) | "
          "peak GPU memory (MB) |")
    print("|---|---|---|---|---|")
    for device, r, tps, gflops in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "–"
        print(f"| {device} | {tps:,.0f} | {gflops:.1f} | {r['peak_rss_mb']:.0f} | {gpu} |")


if __name__ == "__main__":
    main()
