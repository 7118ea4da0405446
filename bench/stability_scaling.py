"""Time and peak memory of the stability census against a naive baseline, over S SAEs x m features.

Ours: ``saestab.matching.pairwise_max_cosine`` (chunked, each unordered pair multiplied once,
several reference SAEs per GEMM, float16/int32 tables) followed by
``saestab.stability.stability_from_maxcos``.

Naive baseline: for every ordered pair (a, b), the full m x m cosine matrix in numpy (float32),
its row max/argmax, and ``scipy.optimize.linear_sum_assignment`` on it for one-to-one matching;
then the same stability table. On CPU both do their matrix products with numpy's BLAS, so the
comparison is of the algorithms, not of BLAS builds. The baseline runs only ``--baseline-pairs``
ordered pairs; its time is extrapolated linearly to all S(S-1) pairs (the table is built once,
timed as measured). Its time is shown both with and without the Hungarian step.

Memory: each measurement runs in a fresh subprocess. "peak" is the process's ru_maxrss after the
run minus its resident set just before it (inputs already allocated, and the code paths warmed
up on a tiny input so that library pages loaded on first use are not counted), so it counts every
allocation (numpy, torch, scipy) the run makes on top of the inputs. "tracemalloc" is the peak of
the allocations Python's tracemalloc sees (numpy and Python objects; not torch's or scipy's C++
buffers), for reference. Directions are random unit vectors (seeded).

``--compare-blocking`` times ``pairwise_max_cosine`` with one reference SAE per GEMM against
stacked references (the default). ``--compare-kernels`` times the two CPU kernels inside it
against their plain torch forms: the block product (numpy's BLAS, as ``_matmul_into`` does,
vs ``torch.mm``) and the column maximum of a block (``_column_max`` vs ``torch.max(dim=0)``).

Usage:
  python bench/stability_scaling.py --quick
  python bench/stability_scaling.py --seeds 8 16 32 --sizes 2048 4096 16384
  python bench/stability_scaling.py --compare-blocking   # one pair per GEMM vs stacked
  python bench/stability_scaling.py --compare-kernels    # numpy vs torch product, column max
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab.matching import (  # noqa: E402
    DEFAULT_MAX_BLOCK_BYTES,
    MIN_STACK_ROWS,
    _column_max,
    _matmul_into,
    pairwise_max_cosine,
)
from saestab.stability import label_fractions, stability_from_maxcos  # noqa: E402

THETA, EPS = 0.7, 0.05
QUICK = [(8, 2048), (16, 2048), (8, 4096)]


def make_dirs(S: int, m: int, d: int, seed: int) -> np.ndarray:
    """(S, m, d) float32 random unit rows, built one SAE at a time (small temporaries)."""
    rng = np.random.default_rng(seed)
    out = np.empty((S, m, d), dtype=np.float32)
    for s in range(S):
        x = rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s] = x
    return out


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_ours(D: np.ndarray, chunk_size: int, max_block_bytes: int, device: str) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    maxcos, _ = pairwise_max_cosine(D, chunk_size=chunk_size, device=device,
                                    max_block_bytes=max_block_bytes)
    t1 = time.perf_counter()
    label_fractions(stability_from_maxcos(maxcos, THETA, EPS))
    c2, t2 = time.process_time(), time.perf_counter()
    return {"t_match": t1 - t0, "t_table": t2 - t1, "t_total": t2 - t0, "cpu_total": c2 - c0}


def run_baseline(D: np.ndarray, n_pairs: int, seed: int) -> dict:
    from scipy.optimize import linear_sum_assignment

    S, m, _ = D.shape
    pairs = [(a, b) for a in range(S) for b in range(S) if a != b]
    rng = np.random.default_rng(seed)
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=min(n_pairs, len(pairs)),
                                           replace=False)]
    maxcos = np.ones((S, S, m), dtype=np.float32)
    argmax = np.broadcast_to(np.arange(m), (S, S, m)).copy()
    t_mat = t_lsa = c_mat = c_lsa = 0.0
    for a, b in chosen:
        c0, t0 = time.process_time(), time.perf_counter()
        C = D[a] @ D[b].T
        maxcos[a, b] = C.max(axis=1)
        argmax[a, b] = C.argmax(axis=1)
        c1, t1 = time.process_time(), time.perf_counter()
        linear_sum_assignment(C, maximize=True)
        c_lsa += time.process_time() - c1
        t_lsa += time.perf_counter() - t1
        t_mat += t1 - t0
        c_mat += c1 - c0
        del C
    c0, t0 = time.process_time(), time.perf_counter()
    label_fractions(stability_from_maxcos(maxcos, THETA, EPS))
    t_table, c_table = time.perf_counter() - t0, time.process_time() - c0
    k, total = len(chosen), len(pairs)
    return {"pairs_run": k, "pairs_total": total, "t_mat_per_pair": t_mat / k,
            "t_lsa_per_pair": t_lsa / k, "t_table": t_table,
            "t_total_argmax_only": t_mat / k * total + t_table,
            "t_total": (t_mat + t_lsa) / k * total + t_table,
            "cpu_total": (c_mat + c_lsa) / k * total + c_table}


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    # warm up on a tiny input first, so that library code paged in on first use (BLAS kernels,
    # torch's thread pool) is not counted as the run's memory
    tiny = make_dirs(2, 64, args.d, args.seed)
    if args.worker == "ours":
        run_ours(tiny, args.chunk_size, args.max_block_bytes, args.device)
    else:
        run_baseline(tiny, 2, args.seed)
    D = make_dirs(args.S, args.m, args.d, args.seed)
    before = rss_bytes()
    maxrss_before = maxrss_bytes()
    tracemalloc.start()
    if args.worker == "ours":
        out = run_ours(D, args.chunk_size, args.max_block_bytes, args.device)
    else:
        out = run_baseline(D, args.baseline_pairs, args.seed)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = maxrss_bytes()
    out.update({"peak_bytes": max(after - before, 0), "traced_bytes": traced,
                # when the run never raised the high-water mark, "peak" is only an upper bound
                "peak_is_upper_bound": after <= maxrss_before,
                "input_bytes": D.nbytes})
    print(json.dumps(out), flush=True)


def measure(kind: str, S: int, m: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--S", str(S), "--m", str(m),
           "--d", str(args.d), "--seed", str(args.seed), "--chunk-size", str(args.chunk_size),
           "--max-block-bytes", str(args.max_block_bytes), "--device", args.device,
           "--baseline-pairs", str(args.baseline_pairs), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} S={S} m={m} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def compare_blocking(args: argparse.Namespace) -> None:
    """One reference SAE per GEMM vs as many as fit in max_block_bytes (same process)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"blocking comparison, d={args.d}, chunk_size={args.chunk_size}, "
          f"max_block_bytes={mib(args.max_block_bytes)} MiB, torch threads "
          f"{torch.get_num_threads()}; best of {args.repeats}, runs interleaved")
    for S, m in [(6, 1152), (16, 4096)]:
        D = make_dirs(S, m, args.d, args.seed)
        wall: dict[str, list[float]] = {"1 per GEMM": [], "stacked": []}
        cpu: dict[str, list[float]] = {"1 per GEMM": [], "stacked": []}
        for _ in range(args.repeats):
            for name, refs in (("1 per GEMM", 1), ("stacked", None)):
                c0, t0 = time.process_time(), time.perf_counter()
                pairwise_max_cosine(D, chunk_size=args.chunk_size, device=args.device,
                                    max_block_bytes=args.max_block_bytes, refs_per_block=refs)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        print(f"  S={S:3d} m={m:6d}: " + "; ".join(
            f"{k} wall {min(wall[k]):.2f} s, cpu {min(cpu[k]):.2f} s (runs wall "
            f"{', '.join(f'{t:.2f}' for t in wall[k])})" for k in wall)
            + f"; stacked / 1 per GEMM: wall {min(wall['stacked']) / min(wall['1 per GEMM']):.2f}"
            f", cpu {min(cpu['stacked']) / min(cpu['1 per GEMM']):.2f}", flush=True)


def best_time(fn, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def compare_kernels(args: argparse.Namespace) -> None:
    """The CPU kernels of pairwise_max_cosine against plain torch, on one cosine block of
    MIN_STACK_ROWS anchor rows x max_block_bytes of reference columns (float32)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = MIN_STACK_ROWS
    cols = args.max_block_bytes // (4 * rows)
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    print(f"kernel comparison on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch threads "
          f"{torch.get_num_threads()}; numpy BLAS {blas.get('name', '?')} "
          f"{blas.get('version', '')}, torch MKL {torch.backends.mkl.is_available()}; "
          f"best of {args.repeats} after a warm-up")
    rng = np.random.default_rng(args.seed)
    x = torch.from_numpy(rng.standard_normal((rows, args.d), dtype=np.float32))
    refs = torch.from_numpy(rng.standard_normal((cols, args.d), dtype=np.float32))
    out = torch.empty(rows, cols)
    n = rows * cols
    t_np = best_time(lambda: _matmul_into(x, refs, out), args.repeats)
    t_torch = best_time(lambda: torch.mm(x, refs.T, out=out), args.repeats)
    print(f"  product ({rows} x {args.d}) @ ({args.d} x {cols}): numpy "
          f"{t_np / n * 1e9:.1f} ns, torch.mm {t_torch / n * 1e9:.1f} ns per output element "
          f"(torch / numpy {t_torch / t_np:.2f})")
    t_max = best_time(lambda: out.max(dim=0), args.repeats)
    t_col = best_time(lambda: _column_max(out), args.repeats)
    if not torch.equal(out.max(dim=0).values, _column_max(out)[0]):
        raise RuntimeError("_column_max disagrees with torch.max(dim=0)")
    print(f"  column max of the {rows} x {cols} block ({mib(out.nbytes)} MiB): "
          f"torch.max(dim=0) {t_max / n * 1e9:.1f} ns, _column_max {t_col / n * 1e9:.1f} ns "
          f"per element (torch.max / _column_max {t_max / t_col:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"only (S, m) in {QUICK}, 2 baseline pairs each")
    p.add_argument("--seeds", type=int, nargs="+", default=[8, 16, 32], help="values of S")
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 16384],
                   help="values of m (features per SAE)")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--baseline-pairs", type=int, default=4,
                   help="ordered pairs the baseline runs (time extrapolated to all)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--max-block-bytes", type=int, default=DEFAULT_MAX_BLOCK_BYTES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); numpy's BLAS, which does the CPU "
                        "products of both ours and the baseline, follows OPENBLAS_NUM_THREADS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-blocking", action="store_true")
    p.add_argument("--compare-kernels", action="store_true")
    p.add_argument("--repeats", type=int, default=2,
                   help="for --compare-blocking and --compare-kernels")
    p.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--S", type=int, help=argparse.SUPPRESS)
    p.add_argument("--m", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.compare_blocking or args.compare_kernels:
        if args.compare_kernels:
            compare_kernels(args)
        if args.compare_blocking:
            compare_blocking(args)
        return
    grid = QUICK if args.quick else list(itertools.product(args.seeds, args.sizes))
    if args.quick:
        args.baseline_pairs = min(args.baseline_pairs, 2)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at start; torch {torch.__version__}, device "
          f"{args.device}. A SHARED machine: other jobs may be using the CPU, so times are "
          "noisy and single runs.")
    print(f"d={args.d}, theta={THETA}, eps={EPS}, chunk_size={args.chunk_size}, "
          f"max_block_bytes={mib(args.max_block_bytes)} MiB; baseline time extrapolated "
          f"linearly from {args.baseline_pairs} ordered pair(s) to all S(S-1) pairs.\n")
    header = (f"{'S':>3} {'m':>6} | {'ours s':>8} {'cpu s':>7} {'peak MiB':>8} {'traced':>7} | "
              f"{'base s':>9} {'(no Hung.)':>10} {'cpu s':>8} {'peak MiB':>8} {'traced':>7} | "
              f"{'time x':>7} {'(no Hung.)':>10} {'cpu x':>6} {'mem x':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for S, m in grid:
        ours = measure("ours", S, m, args)
        line = (f"{S:>3} {m:>6} | {ours['t_total']:>8.2f} {ours['cpu_total']:>7.1f} "
                f"{mib(ours['peak_bytes']):>8} {mib(ours['traced_bytes']):>7} | ")
        if args.no_baseline:
            print(line, flush=True)
            rows.append({"S": S, "m": m, "ours": ours})
            continue
        base = measure("baseline", S, m, args)
        line += (f"{base['t_total']:>9.1f} {base['t_total_argmax_only']:>10.1f} "
                 f"{base['cpu_total']:>8.1f} "
                 f"{mib(base['peak_bytes']):>8} {mib(base['traced_bytes']):>7} | "
                 f"{base['t_total'] / ours['t_total']:>7.1f} "
                 f"{base['t_total_argmax_only'] / ours['t_total']:>10.1f} "
                 f"{base['cpu_total'] / ours['cpu_total']:>6.1f} "
                 f"{base['peak_bytes'] / max(ours['peak_bytes'], 1):>6.1f}")
        print(line, flush=True)
        rows.append({"S": S, "m": m, "ours": ours, "baseline": base})
    print("\ntimes in seconds (baseline: extrapolated, see above); cpu = process CPU time, all "
          "threads (less sensitive than wall time to other jobs on a shared machine); peak = "
          "extra resident memory over the inputs (ru_maxrss delta, fresh subprocess); traced = "
          "tracemalloc peak (numpy/Python only); time x, cpu x, mem x = baseline / ours.")
    for r in rows:
        o = r["ours"]
        extra = ""
        if "baseline" in r:
            b = r["baseline"]
            extra = (f"; baseline per pair: matrix+argmax {b['t_mat_per_pair']:.2f} s, "
                     f"Hungarian {b['t_lsa_per_pair']:.2f} s ({b['pairs_run']}/"
                     f"{b['pairs_total']} pairs run), table {b['t_table']:.2f} s")
        flag = " (peak is an upper bound)" if o["peak_is_upper_bound"] else ""
        print(f"S={r['S']} m={r['m']}: ours match {o['t_match']:.2f} s + table "
              f"{o['t_table']:.2f} s, inputs {mib(o['input_bytes'])} MiB{flag}{extra}")


if __name__ == "__main__":
    main()
