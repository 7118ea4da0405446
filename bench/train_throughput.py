"""SAE training throughput: our trainer against SAELens's, S seeds together against one by one,
and the encoder matmul's share of the machine's matmul rate. Ratios measured side by side in
one run on this machine (a benchmark, not a timed test).

Usage:
    python bench/train_throughput.py [--tokens N] [--synthetic] [--threads 2] [--seeds 4]
(with the project's venv: ``.venv/bin/python bench/train_throughput.py``).

What it measures (TopK SAE, defaults d = 576 from the cache, m = 1152, k = 32, batch 512,
one epoch of the training cache, 549,376 tokens of the default one; lr = our trainer's default
for m):

1. **Ours vs SAELens.** ``saestab.training.train_group`` (one seed) and SAELens's own
   ``SAETrainer`` + ``TopKTrainingSAE`` (in a subprocess in ``bench/.venv-saelens``, see
   ``bench/_saelens_runner.py``) on the same cached activations: same d / m / k / batch / steps /
   learning rate / row order, the same input scale (our trainer's, by default unit variance, a
   factor from the cache statistics; folded back into the weights afterwards) and the same
   number of torch threads. Reported: training tokens/s of each (the training loop only: data
   gather, forward, backward, optimiser step), the ratio ours / SAELens, and the explained variance
   EV = 1 - sum||x - x_hat||^2 / sum||x - mean||^2 of each trained SAE on the held-out (eval)
   cache, computed by the same code (``saestab.sae.SAE``) for both. SAELens is run twice, once
   with its default LR schedule (constant, no warm-up / decay) and once with our schedule
   (linear warm-up over 100 steps, linear decay to 0 over the last 20%) expressed through its
   own scheduler options; the compute per step is the same, so its throughput is the better of
   the two, and both EVs are shown. The recipes otherwise keep each library's defaults (listed
   in the printed notes).
2. **S seeds together vs one by one** (our trainer): one ``train_group`` call with S init seeds
   against S calls with one seed each; amortised tokens/s per SAE = S * tokens / seconds.
3. **Encoder FLOP share.** The fp32 rate of a square matmul (GFLOP/s) and the rate of the
   encoder matmul ``x @ W_enc``, (batch, d) x (d, m), timed alone at the training batch size,
   as a share of it.
4. **The workflow's training job.** The default run's ``train_saes`` job trains all seeds of a
   configuration together (``--job-seeds``, 6) on one thread (``--job-threads``: two jobs share
   the 2 cores): its amortised tokens/s per SAE, and that as a share of the encoder-only rate on
   the same thread count (S encoder matmuls against an S-seed step).
5. **Where a step's time goes** (``--profile N``): ``torch.profiler`` over N training steps
   (after 20 warm-up steps), of one seed on the bench's threads and then of part 4's job (its
   seeds stacked, on its threads), each step's wall time without the profiler, the operators by
   self CPU time per step, and the share of the step taken by the three it cannot do without
   (the encoder matmul ``baddbmm``, the top-k selection and the fused Adam update): the step's
   floor on this machine. On a CPU the selection is a compiled kernel (``top_indices``), which
   the profiler does not see; it is timed apart on the same steps' pre-activations and added to
   the step, and (for one seed) compared on one thread with the numpy selections it replaced.
   The decoder-norm kernels (``project_out_rows``, ``normalise_rows``) and Python are seen by
   neither: they are only in the wall time per step.

The machine has 2 cores and is shared with other processes, so each comparison alternates A and
B (``--repeats``, 3 by default) and keeps the better of each; part 1 also prints each
alternation's ratio and their median, which a quiet spell during one short run cannot move (on
2026-12-02 two alternations read 2.75x and 3.92x). The load average is printed with the results.
The bench sets ``OMP_WAIT_POLICY=PASSIVE`` for both trainers unless the variable is already set
(with libgomp's spinning default, 2-thread steps on the shared machine ran 3-8x slower and
erratically; run with ``OMP_WAIT_POLICY=ACTIVE`` to measure that setting).

Data: ``results/smollm2/trained/blocks.15.hook_resid_post/cache/{train,eval}``. Without it (or
with ``--synthetic``) a synthetic cache of the same shape is written to a temporary directory
(sparse non-negative combinations of random directions plus noise) and the output says so.

Setting up the SAELens side (once; SAELens pins transformer-lens < 4, hence its own venv):
    python3.11 -m venv bench/.venv-saelens
    bench/.venv-saelens/bin/pip install torch==2.13.0   # first: the CPU build from /opt/wheels
    bench/.venv-saelens/bin/pip install sae-lens==6.54.12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch starts its OpenMP runtime (inherited by the SAELens subprocess): on this shared
# 2-core machine, spinning OpenMP workers (the default ACTIVE policy) made every parallel op wait
# for a descheduled thread; measured 2-thread steps ran 3-8x slower than with PASSIVE.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
from saestab.activations import ActivationCache, write_cache  # noqa: E402
from saestab.sae import (  # noqa: E402
    SAE,
    _kernels,
    fold_input_scale,
    load_sae,
    sae_from_tensors,
)
from saestab.sae._sparse import _select_rows, top_indices  # noqa: E402
from saestab.training import (  # noqa: E402
    RunOptions,
    ShuffledStream,
    TrainConfig,
    TrainResult,
    input_scale,
    train_group,
)

DEFAULT_CACHE = REPO / "results/smollm2/trained/blocks.15.hook_resid_post/cache"
SAELENS_PY = REPO / "bench/.venv-saelens/bin/python"
RUNNER = REPO / "bench/_saelens_runner.py"


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def synthetic_cache(path: Path, n_tokens: int, d: int, seed: int) -> ActivationCache:
    """A cache of ``n_tokens`` rows: each vocabulary item is an offset plus a non-negative
    combination of 8 of 4096 random unit directions; each row adds small Gaussian noise."""
    rng = np.random.default_rng(1234)  # the same dictionary for train and eval
    vocab, n_dirs, per_tok = 16384, 4096, 8
    dirs = rng.standard_normal((n_dirs, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    idx = rng.integers(0, n_dirs, (vocab, per_tok))
    mags = rng.exponential(1.0, (vocab, per_tok)).astype(np.float32)
    table = (dirs[idx] * mags[..., None]).sum(1) + 0.5 * rng.standard_normal(d).astype(np.float32)
    tab = torch.from_numpy(table)
    gen = torch.Generator().manual_seed(seed)
    t = 128
    contexts = np.random.default_rng(seed).integers(0, vocab, (math.ceil(n_tokens / t), t))

    def forward(ids: torch.Tensor) -> torch.Tensor:
        x = tab[ids]
        return x + 0.05 * torch.randn(x.shape, generator=gen)

    return write_cache(path, forward, contexts, d=d, bos_token_id=None, outlier_factor=None,
                       batch_size=64)


def row_order(cache: ActivationCache, cfg: TrainConfig, data_seed: int,
              n_steps: int) -> np.ndarray:
    """The rows our trainer visits, in order (:meth:`ShuffledStream.epoch_rows`, each epoch
    less its last partial batch)."""
    stream = ShuffledStream(cache, cfg.batch_size, data_seed, shuffle_block=cfg.shuffle_block,
                            shuffle_window=cfg.shuffle_window)
    spe = stream.steps_per_epoch * cfg.batch_size
    parts, total, e = [], 0, 0
    while total < n_steps * cfg.batch_size:
        parts.append(stream.epoch_rows(e)[:spe])
        total, e = total + spe, e + 1
    return np.concatenate(parts)[:n_steps * cfg.batch_size].astype(np.int64)


@torch.no_grad()
def explained_variance(sae: SAE, x: torch.Tensor, chunk: int = 4096) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the rows of ``x`` (float64 sums)."""
    mean = x.double().mean(0)
    sse = var = 0.0
    for start in range(0, len(x), chunk):
        xc = x[start:start + chunk]
        sse += float((xc - sae(xc)).double().pow(2).sum())
        var += float((xc.double() - mean).pow(2).sum())
    return 1.0 - sse / var


# ------------------------------------------------------------------------------------------
# the two trainers
# ------------------------------------------------------------------------------------------
def our_config(args: argparse.Namespace, lr: float | None) -> TrainConfig:
    return TrainConfig(architecture=args.arch, d_sae=args.m, k=args.k, lr=lr,
                       batch_size=args.batch_size, n_epochs=None, n_tokens=args.tokens,
                       decode=args.decode)


def run_ours(cache: ActivationCache, cfg: TrainConfig,
             seeds: list[int]) -> tuple[TrainResult, float, float]:
    """One ``train_group`` call; returns the result, its wall-clock seconds (incl. data load,
    b_dec init and export) and the median seconds of one training step (from the callback)."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = train_group(cache, cfg, seeds, 0, RunOptions(
        snapshots_at_epochs=(), callback=lambda _: stamps.append(time.perf_counter())))
    return res, time.perf_counter() - t0, float(np.median(np.diff(stamps)))


def run_saelens(work: Path, tag: str, *, scale: float, rcfg: TrainConfig, steps: int,
                schedule: str, threads: int, seed: int) -> tuple[dict[str, Any], SAE]:
    """Train with SAELens in its venv; return its timing.json and the SAE on raw inputs."""
    out = work / f"saelens-{tag}"
    decay = int(round(rcfg.lr_decay_fraction * steps))
    lr = float(rcfg.lr)  # type: ignore[arg-type]
    cmd = [str(SAELENS_PY), str(RUNNER), "--data", str(work / "train.npy"),
           "--order", str(work / "order.npy"), "--scale", repr(scale),
           "--d-sae", str(rcfg.d_sae), "--k", str(rcfg.k), "--batch-size", str(rcfg.batch_size),
           "--lr", repr(lr), "--steps", str(steps), "--schedule", schedule,
           "--warmup-steps", str(rcfg.warmup_steps), "--decay-steps", str(decay),
           "--threads", str(threads), "--seed", str(seed), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
           "WANDB_MODE": "disabled"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"SAELens runner failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    info = json.loads((out / "timing.json").read_text())
    raw = load_sae(out)  # SAELens layout: decoder norms already folded in by save_inference_model
    sae = sae_from_tensors(raw.cfg, fold_input_scale(raw.state_tensors(), scale))
    return info, sae


# ------------------------------------------------------------------------------------------
# matmul rates
# ------------------------------------------------------------------------------------------
def _rate(fn: Callable[[], Any], flops: float, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - t) / 1e9


def matmul_rates(batch: int, d: int, m: int, rounds: int = 3) -> tuple[list[float], list[float]]:
    """GFLOP/s of a 2048^2 square matmul and of ``x @ W_enc``, alternated ``rounds`` times."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(batch, d), torch.randn(d, m) / math.sqrt(d)
    square, enc = [], []
    for _ in range(rounds):
        square.append(_rate(lambda: a @ b, 2.0 * n**3, 6))
        enc.append(_rate(lambda: x @ w, 2.0 * batch * d * m, 60))
    return square, enc


# ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=None,
                    help="training tokens per SAE in part 1 (default: one epoch of the training "
                         "cache: 549376 for the default run's)")
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic cache")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE),
                    help="directory holding the train/ and eval/ caches")
    ap.add_argument("--m", type=int, default=1152, help="SAE width")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--arch", default="topk", help="architecture of our side (SAELens: topk)")
    ap.add_argument("--decode", default="auto", choices=["auto", "dense", "sparse"],
                    help="our implementation: CSR (sparse) or dense decoding")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None, help="default: our trainer's default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=4, help="S for part 2")
    ap.add_argument("--group-tokens", type=int, default=51_200,
                    help="training tokens per SAE in part 2 (default 51200 = 100 steps of 512)")
    ap.add_argument("--repeats", type=int, default=3, help="alternations of A and B")
    ap.add_argument("--job-seeds", type=int, default=6,
                    help="part 4: seeds of one workflow training job (config.yaml's n_seeds)")
    ap.add_argument("--job-threads", type=int, default=1,
                    help="part 4: its threads (2 cores / parallel_jobs 2 = 1)")
    ap.add_argument("--eval-tokens", type=int, default=65536, help="held-out rows for the EV")
    ap.add_argument("--skip-saelens", action="store_true", help="skip part 1's SAELens side")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N training steps, operator by operator: of one seed, "
                         "and of part 4's job (--job-seeds on --job-threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("saestab").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    t_bench = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        work = Path(tmp)
        cache_root = Path(args.cache)
        synthetic = args.synthetic or not (cache_root / "train" / "header.json").is_file()
        if synthetic:
            if not args.synthetic:
                print(f"NOTE: no cache at {cache_root}; falling back to SYNTHETIC data")
            print("building a synthetic cache (180k train / 18k eval rows, d=576) ...",
                  flush=True)
            train = synthetic_cache(work / "syn-train", 180_000, 576, seed=1)
            held = synthetic_cache(work / "syn-eval", 18_000, 576, seed=2)
        else:
            train = ActivationCache.open(cache_root / "train")
            held = ActivationCache.open(cache_root / "eval")
        n_rows, d = train.n_tokens, train.d
        if args.tokens is None:
            args.tokens = (n_rows // args.batch_size) * args.batch_size
        cfg = our_config(args, args.lr)
        rcfg = cfg.resolved(d, n_rows, torch.device("cpu"))
        cfg = our_config(args, rcfg.lr)  # the same lr, explicitly, for both trainers
        steps = rcfg.total_steps(n_rows)
        scale = input_scale(rcfg.normalize, train.stats)
        x_eval = torch.from_numpy(held.load(0, args.eval_tokens))
        print(f"data: {'synthetic' if synthetic else train.path} ({n_rows} x {d}); eval "
              f"{len(x_eval)} rows; d={d} m={args.m} k={args.k} batch={args.batch_size} "
              f"steps={steps} tokens/SAE={steps * args.batch_size} lr={rcfg.lr:.3g} "
              f"threads={args.threads}; architecture={rcfg.architecture} "
              f"decode={rcfg.decode}", flush=True)

        # ---- 1. ours vs SAELens ----------------------------------------------------------
        ours_tps: list[float] = []
        sl_tps: list[float] = []
        ours_step: list[float] = []  # median seconds per training step
        sl_step: list[float] = []
        ev: dict[str, float] = {}
        sl_info: dict[str, Any] = {}
        have_saelens = SAELENS_PY.is_file() and not args.skip_saelens
        if not have_saelens and not args.skip_saelens:
            raise SystemExit(f"{SAELENS_PY} not found: set up bench/.venv-saelens (see this "
                             "file's docstring) or pass --skip-saelens")
        if have_saelens:
            np.save(work / "train.npy", train.load())
            np.save(work / "order.npy", row_order(train, rcfg, 0, steps))
        decay = int(round(rcfg.lr_decay_fraction * steps))
        schedules = ["default", "matched"] if rcfg.warmup_steps + decay <= steps else ["default"]
        for r in range(args.repeats):
            res, _, step_s = run_ours(train, cfg, [0])
            ours_tps.append(res.tokens_per_second_per_sae)
            ours_step.append(step_s)
            ev["ours"] = explained_variance(res.saes[0], x_eval)
            dead = res.history[-1]["dead_fraction"] if res.history else float("nan")
            print(f"[1] ours     run {r + 1}: {ours_tps[-1]:8.0f} tok/s  "
                  f"({res.seconds:.1f} s, median step {1000 * step_s:.0f} ms)  "
                  f"EV {ev['ours']:.4f}  dead {dead:.3f}", flush=True)
            if have_saelens:
                sched = schedules[r % len(schedules)]
                info, sae = run_saelens(work, f"{r}", scale=scale, rcfg=rcfg, steps=steps,
                                        schedule=sched, threads=args.threads, seed=0)
                sl_tps.append(info["tokens_per_second"])
                sl_step.append(info["step_seconds_median"])
                ev[f"saelens_{sched}"] = explained_variance(sae, x_eval)
                sl_info = info
                print(f"[1] SAELens  run {r + 1}: {sl_tps[-1]:8.0f} tok/s  "
                      f"({info['seconds']:.1f} s, median step "
                      f"{1000 * info['step_seconds_median']:.0f} ms)  "
                      f"EV {ev[f'saelens_{sched}']:.4f}  dead {info['dead_fraction']:.3f}  "
                      f"(schedule {sched})", flush=True)

        # ---- 2. S seeds together vs one by one -------------------------------------------
        s_count = args.seeds
        gcfg = dataclasses.replace(cfg, n_tokens=args.group_tokens)
        g_tokens = gcfg.total_steps(n_rows) * args.batch_size
        together: list[tuple[float, float]] = []  # (loop seconds, wall seconds)
        apart: list[tuple[float, float]] = []
        for r in range(args.repeats):
            res, wall, _ = run_ours(train, gcfg, list(range(s_count)))
            together.append((res.seconds, wall))
            print(f"[2] {s_count} seeds together, run {r + 1}: loop {res.seconds:.1f} s, "
                  f"wall {wall:.1f} s", flush=True)
            loop_s = wall_s = 0.0
            for s in range(s_count):
                res, wall, _ = run_ours(train, gcfg, [s])
                loop_s += res.seconds
                wall_s += wall
            apart.append((loop_s, wall_s))
            print(f"[2] {s_count} seeds one by one, run {r + 1}: loop {loop_s:.1f} s, "
                  f"wall {wall_s:.1f} s", flush=True)

        # ---- 3. encoder FLOP share -------------------------------------------------------
        square, enc = matmul_rates(args.batch_size, d, args.m)
        print(f"[3] square matmul GFLOP/s: {', '.join(f'{v:.1f}' for v in square)}; "
              f"encoder: {', '.join(f'{v:.1f}' for v in enc)}", flush=True)

        # ---- 4. the workflow's own training job: S seeds together on its thread count ----
        # A train_saes job of the default run trains all seeds of a configuration in one group
        # on one thread (2 cores, two jobs side by side). Its encoder-only rate is a seed's
        # x @ W_enc on that many threads, so the share compares S encoder matmuls with a step.
        torch.set_num_threads(args.job_threads)
        job: list[float] = []  # training-loop seconds
        job_enc: list[float] = []
        for r in range(args.repeats):
            res, _, _ = run_ours(train, gcfg, list(range(args.job_seeds)))
            job.append(res.seconds)
            job_enc.append(max(matmul_rates(args.batch_size, d, args.m, rounds=1)[1]))
            print(f"[4] {args.job_seeds} seeds together on {args.job_threads} thread(s), run "
                  f"{r + 1}: loop {res.seconds:.1f} s; encoder {job_enc[-1]:.1f} GFLOP/s",
                  flush=True)
        torch.set_num_threads(args.threads)

    # ---- table ---------------------------------------------------------------------------
    load_after = os.getloadavg()
    best_ours = max(ours_tps)
    t_best = min(t for t, _ in together)
    a_best = min(t for t, _ in apart)
    tw_best = min(w for _, w in together)
    aw_best = min(w for _, w in apart)
    peak, enc_rate = max(square), max(enc)
    enc_tps = enc_rate * 1e9 / (2.0 * d * args.m)
    rows: list[tuple[str, str]] = []
    n1 = steps * args.batch_size
    rows.append((f"1. ours vs SAELens (TopK d={d} m={args.m} k={args.k} B={args.batch_size}, "
                 f"{n1} tokens, {args.threads} threads)", ""))
    rows.append((f"   ours: tokens/s per SAE (best of {len(ours_tps)})", f"{best_ours:,.0f}"))
    if sl_tps:
        best_sl = max(sl_tps)
        rows.append((f"   SAELens: tokens/s (best of {len(sl_tps)})", f"{best_sl:,.0f}"))
        rows.append(("   ratio ours / SAELens (whole training loop)",
                     f"{best_ours / best_sl:.2f}x"))
        rows.append(("   ratio ours / SAELens (median step time, best of each)",
                     f"{min(sl_step) / min(ours_step):.2f}x"))
        # the spread behind the best-of-each ratio: each alternation's ours / its SAELens run
        pairs = [o / s for o, s in zip(ours_tps, sl_tps, strict=True)]
        rows.append(("   ratio ours / SAELens, each alternation (loop)",
                     " ".join(f"{r:.2f}x" for r in pairs)))
        # best-of-each favours the shorter run, which more often fits in a quiet spell of a
        # shared machine; the median of paired ratios does not (use --repeats >= 3)
        rows.append((f"   ratio ours / SAELens, median of the {len(pairs)} alternations",
                     f"{float(np.median(pairs)):.2f}x"))
    rows.append(("   EV held-out, ours", f"{ev['ours']:.4f}"))
    for sched in schedules:
        if f"saelens_{sched}" in ev:
            label = ("its default: constant LR" if sched == "default"
                     else "our warm-up/decay schedule")
            rows.append((f"   EV held-out, SAELens ({label})", f"{ev[f'saelens_{sched}']:.4f}"))
    rows.append((f"2. {s_count} seeds together vs one by one (ours, {g_tokens} tokens/SAE)", ""))
    rows.append(("   together: amortised tokens/s per SAE (S*N/loop s)",
                 f"{s_count * g_tokens / t_best:,.0f}"))
    rows.append(("   together: each SAE's own rate (TrainResult)", f"{g_tokens / t_best:,.0f}"))
    rows.append(("   one by one: amortised tokens/s per SAE",
                 f"{s_count * g_tokens / a_best:,.0f}"))
    rows.append(("   ratio together / one by one (training loop)", f"{a_best / t_best:.2f}x"))
    rows.append(("   ratio together / one by one (wall, incl. load+init)",
                 f"{aw_best / tw_best:.2f}x"))
    rows.append(("3. encoder FLOP share", ""))
    rows.append(("   fp32 square matmul 2048^2 (best of 3)", f"{peak:.1f} GFLOP/s"))
    rows.append((f"   encoder x@W_enc ({args.batch_size}x{d} @ {d}x{args.m}, best of 3)",
                 f"{enc_rate:.1f} GFLOP/s"))
    rows.append(("   encoder rate / matmul rate", f"{100 * enc_rate / peak:.0f}%"))
    rows.append(("   ours training tokens/s / encoder-matmul-only tokens/s",
                 f"{100 * best_ours / enc_tps:.1f}%"))
    job_tps = args.job_seeds * g_tokens / min(job)
    job_enc_tps = max(job_enc) * 1e9 / (2.0 * d * args.m)
    rows.append((f"4. the workflow's training job: {args.job_seeds} seeds together, "
                 f"{args.job_threads} thread(s), {g_tokens} tokens/SAE", ""))
    rows.append(("   amortised tokens/s per SAE (S*N/loop s, best of "
                 f"{len(job)})", f"{job_tps:,.0f}"))
    rows.append((f"   encoder x@W_enc on {args.job_threads} thread(s) (best of {len(job_enc)})",
                 f"{max(job_enc):.1f} GFLOP/s"))
    rows.append(("   job tokens/s per SAE / encoder-matmul-only tokens/s",
                 f"{100 * job_tps / job_enc_tps:.1f}%"))
    width = max(len(a) for a, _ in rows) + 2
    print("\n" + "=" * (width + 18))
    print(f"{'measure':<{width}}{'value':>16}")
    print("-" * (width + 18))
    for a, b in rows:
        print(f"{a:<{width}}{b:>16}")
    print("=" * (width + 18))
    print("data: " + ("SYNTHETIC (no real cache used)" if synthetic
                      else f"real cache {train.path}"))
    print(f"NOTE: shared machine ({os.cpu_count()} cores): load average "
          f"{load_before[0]:.1f} at start, {load_after[0]:.1f} at end; each pair was "
          f"alternated {args.repeats}x and the better of each kept; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}. Bench took {time.perf_counter() - t_bench:.0f} s.")
    if sl_info:
        print(f"SAELens {sl_info['sae_lens_version']} (torch {sl_info['torch_version']}): "
              "SAETrainer + TopKTrainingSAE fed an iterator of batches; its defaults kept: "
              "Adam eps 1e-8, grad-norm clip 1.0, AuxK coefficient 1.0 with dead window "
              f"{sl_info['trainer_cfg']['dead_feature_window']} steps, decoder init norm 0.1, "
              "b_dec init zeros, TopK on decoder-norm-rescaled pre-activations. Ours: Adam eps "
              f"{rcfg.adam_eps:g}, no clipping, AuxK coefficient {rcfg.aux_coefficient:g} with "
              f"dead window {rcfg.dead_steps} steps, unit-norm decoder (projected gradient), "
              f"b_dec init {rcfg.b_dec_init}, warm-up {rcfg.warmup_steps} steps + linear decay "
              f"over the last {rcfg.lr_decay_fraction:.0%}.")
    if args.profile:
        profile_steps(train, cfg, args.profile)
        # the workflow's job (part 4's seeds and threads), where the default run spends its time
        profile_steps(train, cfg, args.profile, seeds=args.job_seeds, threads=args.job_threads)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "synthetic": synthetic, "steps": steps, "tokens": n1, "threads": args.threads,
            "ours_tps": ours_tps, "saelens_tps": sl_tps, "ev": ev,
            "together_seconds": together, "one_by_one_seconds": apart, "seeds": s_count,
            "group_tokens": g_tokens, "square_gflops": square, "encoder_gflops": enc,
            "job_seeds": args.job_seeds, "job_threads": args.job_threads,
            "job_loop_seconds": job, "job_encoder_gflops": job_enc,
            "load_before": load_before, "load_after": load_after}, indent=1) + "\n")


# the encoder matmul, the top-k selection (torch.topk where it is used) and the fused Adam update
FLOOR_OPS = ("aten::baddbmm", "aten::topk", "aten::_fused_adam_")


def profile_steps(cache: ActivationCache, cfg: TrainConfig, n: int, seeds: int = 1,
                  threads: int | None = None, top: int = 14) -> None:
    """Part 5: per-operator self CPU time of ``n`` training steps of ``seeds`` stacked seeds on
    ``threads`` threads (default: the bench's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        _profile_steps(cache, cfg, n, seeds, top)
    finally:
        torch.set_num_threads(before)


def _profile_steps(cache: ActivationCache, cfg: TrainConfig, n: int, seeds: int,
                   top: int) -> None:
    from torch.profiler import profile

    from saestab.training import loop

    rcfg, data = loop.prepare_data(cache, cfg, 0, torch.device("cpu"))
    state = loop.make_optimizer(loop.build_model(rcfg, data, list(range(seeds)), None), rcfg,
                                data.total_steps)
    batches = data.stream.batches(0, data.total_steps)
    xs = [next(batches) for _ in range(20 + n)]
    for step in range(20):
        loop.train_step(state, xs[step], step)
    # the step's wall time without the profiler, then its operators under it
    t0 = time.perf_counter()
    for step in range(20, 20 + n):
        loop.train_step(state, xs[step], step)
    wall = (time.perf_counter() - t0) / n
    with profile() as prof:
        for step in range(20, 20 + n):
            loop.train_step(state, xs[step], step)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / n / 1e3  # ms per step
    what = "one seed" if seeds == 1 else f"{seeds} seeds stacked"
    print(f"\n5. one step of {what} on {torch.get_num_threads()} thread(s), {n} steps: "
          f"{1e3 * wall:.1f} ms wall per step without the profiler, {total:.1f} ms of operator "
          "self time under it")
    print(f"   {'operator':<34}{'calls/step':>11}{'ms/step':>10}{'share':>8}")
    for e in ops[:top]:
        ms = e.self_cpu_time_total / n / 1e3
        print(f"   {e.key:<34}{e.count / n:>11.1f}{ms:>10.2f}{100 * ms / total:>7.1f}%")
    # on a CPU the selection is a compiled kernel (saestab.sae._sparse.top_indices), which the
    # profiler does not see: timed here on the same steps' pre-activations, outside the profiler
    model = state.model
    with torch.no_grad():
        pres = [torch.baddbmm(model.b_enc.unsqueeze(1), xs[s].unsqueeze(0)
                              - model.b_dec.unsqueeze(1), model.W_enc) for s in range(20, 20 + n)]
    t0 = time.perf_counter()
    for pre in pres:
        top_indices(pre, int(rcfg.k))  # type: ignore[arg-type]
    select = (time.perf_counter() - t0) / n * 1e3
    print(f"   {'top_indices (timed apart)':<34}{1.0:>11.1f}{select:>10.2f}")
    if seeds == 1:
        compare_selection(pres, int(rcfg.k))  # type: ignore[arg-type]
    floor = select + sum(e.self_cpu_time_total for e in ops if e.key in FLOOR_OPS) / n / 1e3
    step = total + select
    print(f"   floor (top_indices, {', '.join(FLOOR_OPS)}): {floor:.2f} ms/step, "
          f"{100 * floor / step:.0f}% of the step's {step:.1f} ms; a step of only these would "
          f"train {seeds * data.stream.batch_size / floor * 1e3:,.0f} tokens/s per SAE"
          + ("" if seeds == 1 else " (amortised over the seeds, as in part 4)"))


def compare_selection(pres: list[torch.Tensor], k: int, rounds: int = 3) -> None:
    """The CPU selection on one thread: the compiled kernel (``_kernels.select_top``, a
    threshold by bisection) against the two numpy selections before it, ``_select_rows`` (each
    row's k-th largest value by introselect as a threshold) and ``np.argpartition`` plus a sort
    of its indices, on the same pre-activations; alternated ``rounds`` times, best of each."""
    rows = [p.reshape(-1, p.shape[-1]).numpy() for p in pres]
    n = rows[0].shape[1]

    def by_kernel(a: np.ndarray) -> None:
        _kernels.select_top(a, np.empty((a.shape[0], k), dtype=np.int64), k)

    def by_threshold(a: np.ndarray) -> None:
        _select_rows(a, np.empty((a.shape[0], k), dtype=np.int64), k)

    def by_argpartition(a: np.ndarray) -> None:
        np.argpartition(a, n - k, axis=-1)[:, n - k:].sort(axis=-1)

    methods = {"kernel": by_kernel, "threshold": by_threshold, "argpartition": by_argpartition}
    best = dict.fromkeys(methods, math.inf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel runs on torch's thread count
    try:
        for _ in range(rounds):
            for name, select in methods.items():
                t0 = time.perf_counter()
                for a in rows:
                    select(a)
                best[name] = min(best[name], (time.perf_counter() - t0) / len(rows) * 1e3)
    finally:
        torch.set_num_threads(threads)
    print(f"   selection on one thread, {rows[0].shape[0]} x {n}, k {k} (best of {rounds}): "
          f"kernel {best['kernel']:.2f} ms, numpy threshold {best['threshold']:.2f} ms "
          f"({best['threshold'] / best['kernel']:.2f}x), argpartition + sort "
          f"{best['argpartition']:.2f} ms ({best['argpartition'] / best['kernel']:.2f}x)")


if __name__ == "__main__":
    main()
