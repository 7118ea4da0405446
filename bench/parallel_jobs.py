"""Compute-heavy jobs one at a time on every core, or side by side on a share of the cores each.

The setting it measures is the config's `parallel_jobs`: with `parallel_jobs: P` the workflow
gives each caching, training, census, masking, surface and pool job cores // P threads, so that
Snakemake runs P of them at once. This bench runs P identical SAE-training jobs (one six-seed
TopK group each, the default recipe, a fixed number of steps on the real cache) in separate
processes, first one after another with every core, then all at once with cores // P threads
each, and prints both wall times and their ratio (> 1: side by side is faster).

Usage: python bench/parallel_jobs.py [--jobs 2] [--steps 200]
       [--cache results/smollm2/trained/blocks.15.hook_resid_post/cache]
The cache comes from `make run`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "results/smollm2/trained/blocks.15.hook_resid_post/cache"


def worker(cache: Path, threads: int, steps: int) -> None:
    """One training job: six TopK seeds of the default recipe for ``steps`` steps."""
    sys.path.insert(0, str(REPO / "workflow"))
    import torch  # noqa: PLC0415

    from saestab import training  # noqa: PLC0415
    from saestab.training.loop import train_group  # noqa: PLC0415

    torch.set_num_threads(threads)
    cfg = training.TrainConfig(architecture="topk", d_sae=1152, k=32, lr=0.004, batch_size=512,
                               n_tokens=512 * steps)
    train_group(cache / "train", cfg, range(6), 0)


def run_jobs(cache: Path, n_jobs: int, threads: int, steps: int, together: bool) -> float:
    cmd = [sys.executable, __file__, "--worker", "--cache", str(cache), "--threads", str(threads),
           "--steps", str(steps)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        logs = [open(Path(tmp) / f"job{i}.log", "w") for i in range(n_jobs)]  # noqa: SIM115
        if together:
            procs = [subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                     for f in logs]
            codes = [p.wait() for p in procs]
        else:
            codes = [subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    check=False).returncode for f in logs]
        for f in logs:
            f.close()
        if any(codes):
            text = (Path(tmp) / f"job{codes.index(next(c for c in codes if c))}.log").read_text()
            raise SystemExit(f"a training job failed:\n{text[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="directory holding the train/ cache")
    ap.add_argument("--jobs", type=int, default=2, help="P, the jobs run side by side")
    ap.add_argument("--steps", type=int, default=200, help="training steps per job")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.cache, a.threads, a.steps)
        return
    if not (a.cache / "train").is_dir():
        raise SystemExit(f"{a.cache / 'train'}: no activation cache; run `make run` first, or "
                         "pass --cache")
    share = max(1, a.cores // a.jobs)
    print(f"{a.jobs} jobs of 6 TopK SAEs x {a.steps} steps (d_sae 1152, k 32, batch 512) on "
          f"{a.cores} cores; load average before: {os.getloadavg()[0]:.2f}")
    serial = run_jobs(a.cache, a.jobs, a.cores, a.steps, together=False)
    print(f"one at a time, {a.cores} threads each:   {serial:7.1f} s")
    together = run_jobs(a.cache, a.jobs, share, a.steps, together=True)
    print(f"side by side, {share} thread(s) each:    {together:7.1f} s")
    print(f"ratio (one at a time / side by side): {serial / together:.2f}; "
          f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
