"""Compiled CPU kernels (numba) for the TopK-family training step, where torch has no fused
equivalent:

- the top-k selection: a threshold per row by bisection among the entries above a lower bound
  (numpy has only a partition, which moves the row's values around, and a sort);
- the decoder-norm constraint: each row's gradient projected and each row renormalised in one
  pass over it (torch: a product, a reduction and an update, each a pass over memory);
- the sparse code's forward: each token decoded through its active latents and its squared
  error taken in the same pass;
- its backward: in torch, the main reconstruction loss's backward reads every active entry's
  residual row once per product (a sampled matmul for the values' gradient, one CSR matmul each
  for ``W_dec`` and ``W_enc``); the kernel visits each latent's entries once and does all three
  while the latent's own rows stay in L1.

Each row's (token's, latent's) outputs are written by one thread in a fixed order, so results do
not depend on the number of threads. Without numba, :data:`AVAILABLE` is False and callers use
torch.
"""

from __future__ import annotations

import functools
import logging
import os
import types
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this is for foreign envs
    numba = None

AVAILABLE = numba is not None

_PARALLEL_PID: int | None = None
"""The process that started numba's threading layer (its first parallel launch), if any."""


def set_threads(n: int) -> None:
    """Run the kernels on ``n`` threads (at most what numba started with)."""
    if numba is not None:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def _code_error_backward(crow_t: np.ndarray, rows_t: np.ndarray, order: np.ndarray,
                         vals: np.ndarray, g_vals: np.ndarray, w_dec: np.ndarray,
                         r: np.ndarray, row_scale: np.ndarray, xin: np.ndarray,
                         g_wdec: np.ndarray, g_wenc_t: np.ndarray,
                         g_benc: np.ndarray) -> None:  # pragma: no cover
    """Backward of ``err_b = ||sum_j relu(pre_bj) W_dec[j] - xin_b||^2`` (``r_b`` the residual)
    for one seed, given ``row_scale_b = 2 dL/d err_b`` and the gradient ``g_vals`` that reaches
    the ReLU'd values by other paths (an L1 penalty; zeros if none). Per latent ``j``, over its
    entries ``(b, p)`` in transposed CSR order (``crow_t``, rows ``rows_t``, row-major positions
    ``order``), where the ReLU passed (``vals[p] > 0``):

    - ``g_pre = row_scale_b <W_dec[j], r_b> + g_vals[p]`` (the pre-activation's gradient);
    - ``g_wdec[j] += vals[p] row_scale_b r_b``;
    - ``g_wenc_t[j] += g_pre xin_b`` and ``g_benc[j] += g_pre``.
    """
    m, d = w_dec.shape
    zero = np.zeros(1, w_dec.dtype)[0]  # dot products accumulate in the weights' dtype
    for j in numba.prange(m):
        gwd = g_wdec[j]
        gwe = g_wenc_t[j]
        wj = w_dec[j]
        gwd[:] = 0.0
        gwe[:] = 0.0
        gb = 0.0
        for q in range(crow_t[j], crow_t[j + 1]):
            p = order[q]
            v = vals[p]
            if v > 0.0:
                b = rows_t[q]
                rb = r[b]
                xb = xin[b]
                sc = row_scale[b]
                s = zero
                for t in range(d):
                    s += wj[t] * rb[t]
                gpre = s * sc + g_vals[p]
                vs = v * sc
                for t in range(d):
                    gwd[t] += vs * rb[t]
                    gwe[t] += gpre * xb[t]
                gb += gpre
        g_benc[j] = gb


def _decode_error(crow: np.ndarray, col: np.ndarray, vals: np.ndarray, w_dec: np.ndarray,
                  target: np.ndarray, r: np.ndarray, err: np.ndarray) -> None:  # pragma: no cover
    """Forward of the same loss for one seed: per token ``b`` (a CSR row ``crow``, ``col``),
    ``r_b = sum_p vals[p] W_dec[col[p]] - target_b`` and ``err_b = ||r_b||^2``, in one pass
    over the row's entries (torch's CSR product writes ``r`` and a second pass reads it)."""
    n, d = r.shape
    zero = np.zeros(1, r.dtype)[0]
    for b in numba.prange(n):
        rb = r[b]
        tb = target[b]
        for t in range(d):
            rb[t] = -tb[t]
        for p in range(crow[b], crow[b + 1]):
            v = vals[p]
            wj = w_dec[col[p]]
            for t in range(d):
                rb[t] += v * wj[t]
        s = zero
        for t in range(d):
            s += rb[t] * rb[t]
        err[b] = s


def _select_top(a: np.ndarray, out: np.ndarray, k: int, n_chunks: int,
                failed: np.ndarray) -> None:  # pragma: no cover
    """``out[b]`` = the columns of the ``k`` largest entries of row ``a[b]``, in column order,
    where a tie at the k-th largest value goes to the lowest columns; ``failed[b]`` where no
    such threshold was found (a NaN, or infinities), the caller's to redo. Per row:

    1. ``t0``, the least of the maxima of ``k`` blocks of columns: ``k`` distinct entries are at
       or above it, and on training steps' pre-activations about a tenth of a row;
    2. those entries are copied out (branch-free), and a threshold with exactly ``k`` of them at
       or above it is found by bisecting the values between ``t0`` and their maximum, each step
       a count (no sort, no partition);
    3. where bisection runs out of floats between two neighbours (a tie), the threshold is the
       k-th largest value, and the entries above it are kept, then the tied ones in column
       order.

    Rows are processed in ``n_chunks`` contiguous chunks, each with one scratch row.
    """
    n_rows, n = a.shape
    for ch in numba.prange(n_chunks):
        vals = np.empty(n, a.dtype)
        cols = np.empty(n, np.int64)
        for b in range(ch * n_rows // n_chunks, (ch + 1) * n_rows // n_chunks):
            row = a[b]
            t0 = np.inf
            for i in range(k):
                mx = -np.inf
                for p in range(i * n // k, (i + 1) * n // k):
                    if row[p] > mx:
                        mx = row[p]
                if mx < t0:
                    t0 = mx
            c = 0
            for p in range(n):
                vals[c] = row[p]
                cols[c] = p
                c += row[p] >= t0
            hi = t0
            for q in range(c):
                if vals[q] > hi:
                    hi = vals[q]
            # invariant: at least k candidates >= lo, fewer than k >= hi (none above the max)
            lo, n_lo, top = t0, c, hi
            while n_lo != k:
                mid = lo + (hi - lo) * 0.5
                if not (lo < mid < hi):
                    break
                m = 0
                for q in range(c):
                    m += vals[q] >= mid
                if m >= k:
                    lo, n_lo = mid, m
                else:
                    hi = mid
            n_gt = 0
            if n_lo != k:  # ties: lo must be the k-th largest value itself
                for q in range(c):
                    n_gt += vals[q] > lo
            if not (n_lo >= k > n_gt and lo <= top):
                failed[b] = True
                continue
            dest = out[b]
            if n_gt == 0:
                # exactly k candidates at or above lo, or none above it (all tied at lo):
                # the first k of them, compacted in place
                j = 0
                for q in range(c):
                    cols[j] = cols[q]
                    j += vals[q] >= lo
                for q in range(k):
                    dest[q] = cols[q]
                continue
            ties, j = k - n_gt, 0
            for q in range(c):
                v = vals[q]
                if v > lo or (v == lo and ties > 0):
                    if v == lo:
                        ties -= 1
                    dest[j] = cols[q]
                    j += 1
                    if j == k:
                        break


def _project_out_rows(g: np.ndarray, w: np.ndarray) -> None:  # pragma: no cover
    """``g[j] -= <g[j], w[j]> w[j]`` for every row ``j`` (``w``'s rows of unit norm)."""
    n, d = g.shape
    zero = np.zeros(1, g.dtype)[0]
    for j in numba.prange(n):
        s = zero
        for t in range(d):
            s += g[j, t] * w[j, t]
        for t in range(d):
            g[j, t] -= s * w[j, t]


def _normalise_rows(w: np.ndarray, eps: float) -> None:  # pragma: no cover
    """``w[j] /= max(||w[j]||, eps)`` for every row ``j``."""
    n, d = w.shape
    zero = np.zeros(1, w.dtype)[0]
    for j in numba.prange(n):
        s = zero
        for t in range(d):
            s += w[j, t] * w[j, t]
        norm = max(np.sqrt(s), eps)
        for t in range(d):
            w[j, t] /= norm


_EXACT = {_select_top}
"""Kernels compiled without fastmath: the selection compares values, and fastmath's "no NaN, no
infinity" would let the compiler drop the very checks that find the rows it gives back. A
property of the function, not of a call: numba's on-disk cache does not tell flags apart."""


@functools.cache
def _compile(py_func: Any, parallel: bool) -> Any:
    """``py_func`` as a numba function, parallel over its ``prange`` loop or serial (``prange``
    is ``range``), its machine code cached on disk (next to this file, or in numba's user cache
    directory) where any location is writable."""
    fastmath = py_func not in _EXACT
    if not parallel:
        # numba's cache index does not tell the two apart: a copy of its own name for each
        py_func = types.FunctionType(py_func.__code__, py_func.__globals__,
                                     py_func.__name__ + "_serial", py_func.__defaults__,
                                     py_func.__closure__)
        py_func.__qualname__ = py_func.__name__
    opts = {"parallel": parallel, "fastmath": fastmath, "boundscheck": False}
    try:
        return numba.njit(cache=True, **opts)(py_func)
    except RuntimeError as e:  # "cannot cache function ...: no locator available"
        log.info("numba cannot cache %s here (%s); compiling it in each process",
                 py_func.__name__, e)
        return numba.njit(**opts)(py_func)


def _run(py_func: Any, *args: Any) -> None:
    """Run ``py_func`` compiled, in parallel on torch's thread count.

    A process forked after its parent started numba's threading layer runs it serially instead:
    GNU OpenMP, the layer numba picks here, terminates a child that launches ("fork() called from
    a process already using GNU OpenMP"), and numba's fork-safe workqueue layer made the
    training step 1.2-1.4x slower on one thread. The serial code gives the same bits
    (tests/test_training.py)."""
    global _PARALLEL_PID
    pid = os.getpid()
    if _PARALLEL_PID is not None and _PARALLEL_PID != pid:
        _compile(py_func, False)(*args)
        return
    _PARALLEL_PID = pid
    n = torch.get_num_threads()
    set_threads(n)
    _compile(py_func, True)(*args)
    if torch.get_num_threads() != n:
        # starting numba's OpenMP layer set the process's OpenMP thread count, which torch
        # shares, to numba's maximum (all cores): a job granted one thread would otherwise run
        # torch on all of them from here on
        torch.set_num_threads(n)


def code_error_backward(*arrays: np.ndarray) -> None:
    """:func:`_code_error_backward`, compiled on first use."""
    _run(_code_error_backward, *arrays)


def select_top(a: np.ndarray, out: np.ndarray, k: int) -> np.ndarray:
    """:func:`_select_top` on the (rows, n) array ``a`` into ``out`` (rows, k); returns the rows
    it could not do (bool)."""
    failed = np.zeros(a.shape[0], dtype=np.bool_)
    _run(_select_top, a, out, k, max(1, min(a.shape[0], 4 * torch.get_num_threads())), failed)
    return failed


def decode_error(*arrays: np.ndarray) -> None:
    """:func:`_decode_error`, compiled on first use."""
    _run(_decode_error, *arrays)


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: on the CPU, contiguous, one float dtype."""
    return (AVAILABLE and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and tensors[0].dtype in (torch.float32, torch.float64)
            and len({t.dtype for t in tensors}) == 1)


def project_out_rows(g: torch.Tensor, w: torch.Tensor) -> None:
    """In place on the (..., d) tensor ``g``: each row minus its component along the same row
    of ``w`` (unit rows). One pass over both (torch: a product, a sum and an update)."""
    _run(_project_out_rows, g.view(-1, g.shape[-1]).numpy(),
         w.detach().view(-1, w.shape[-1]).numpy())


def normalise_rows(w: torch.Tensor, eps: float = 1e-12) -> None:
    """In place on the (..., d) tensor ``w``: each row divided by its norm (at least ``eps``)."""
    _run(_normalise_rows, w.detach().view(-1, w.shape[-1]).numpy(), eps)
