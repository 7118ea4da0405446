"""CSR matmuls through the active latents only: the CPU training path of the TopK family, and
of ReLU+L1 once its code is sparse.

On a CPU a dense (B, m) code costs a full matmul although only k of m latents are active; these
autograd functions decode through the active rows and back-propagate into the encoder through
the selected pre-activations only. Every seed of a stack has the same number of entries per
step (a ReLU code is padded to it, :func:`positive_entries`), so values are (S, nnz) and each
seed has its own :class:`Pattern`; the seeds
are processed in a loop inside the functions and their gradients written into stacked tensors.

On a CPU the decode and its squared error run as one compiled pass per token, and the backward as
one per latent (:mod:`._kernels`); :data:`USE_KERNELS` = False (or no numba) sends both through
torch's CSR products instead.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import _kernels

USE_KERNELS = True
"""Use the compiled CPU forward and backward where they apply (tests switch them off to
compare)."""


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest entries along the last dimension of ``x``, in increasing
    order within each row (the column order CSR rows need); ties are broken arbitrarily.

    On a CPU this is a compiled kernel (:func:`._kernels.select_top`: a threshold per row found
    by bisection among the entries above the least of ``k`` block maxima), or without numba
    numpy's introselect (:func:`_select_rows`), which also takes the rows the kernel gives back
    (a NaN) and selections of more than a 16th of a row. On a training step's (512, 1152)
    pre-activations ``torch.topk`` is the slowest of the three and the kernel the fastest
    (``bench/train_throughput.py --profile`` times the kernel and the numpy ones). numpy
    selects on one thread, so there the rows are split between torch's threads (each row's
    result does not depend on the split)."""
    n = x.shape[-1]
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 0 < k < n:
        a = x.detach().reshape(-1, n).numpy()
        idx = np.empty((a.shape[0], k), dtype=np.int64)
        if USE_KERNELS and _kernels.AVAILABLE and k * _KERNEL_MIN_RATIO <= n:
            failed = _kernels.select_top(np.ascontiguousarray(a), idx, k)
            if failed.any():
                rest = np.empty((int(failed.sum()), k), dtype=np.int64)
                _select_rows(a[failed], rest, k)
                idx[failed] = rest
            return torch.from_numpy(idx).view(*x.shape[:-1], k)
        parts = min(torch.get_num_threads(), a.shape[0] // _MIN_ROWS_PER_THREAD)
        if parts > 1:
            cuts = np.linspace(0, a.shape[0], parts + 1).astype(int)
            pool = _pool(parts, os.getpid())
            done = [pool.submit(_select_rows, a[i:j], idx[i:j], k)
                    for i, j in zip(cuts[:-1], cuts[1:], strict=True)]
            for future in done:
                future.result()  # waits, and raises what the thread raised
        else:
            _select_rows(a, idx, k)
        return torch.from_numpy(idx).view(*x.shape[:-1], k)
    return x.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


_KERNEL_MIN_RATIO = 16
"""The kernel selects k of n where n >= 16 k (a TopK step's k = 32 of 1152): with k a larger
share of the row, bisection has more candidates to count on each step than numpy's introselect
has to move (AuxK's 288 of 600 dead latents took 1.3x as long)."""
_MIN_ROWS_PER_THREAD = 64
_SELECT_BLOCK_BYTES = 64 * 2**20
"""Rows are selected in blocks whose temporaries (a copy of the values and a mask, or
argpartition's int64 indices) stay within this: one (4096, 16384) batch would otherwise need
hundreds of MB of them."""


def _select_rows(a: np.ndarray, out: np.ndarray, k: int) -> None:
    """``out`` = the column positions of each row's ``k`` largest entries, in column order.

    Each row's k-th largest value (``np.partition``, introselect on a copy of the values) is a
    threshold, and the entries at or above it, found in one pass in column order, are the
    selection wherever a row has exactly ``k`` of them (no tie at the threshold, no NaN): faster
    than ``np.argpartition`` plus a sort of its (B, k) indices on training steps'
    pre-activations (``bench/train_throughput.py --profile`` times both). Rows with ties go
    through ``argpartition``."""
    n = a.shape[-1]
    rows = max(1, _SELECT_BLOCK_BYTES // ((a.itemsize + 8) * n))
    for i in range(0, a.shape[0], rows):
        block, dest = a[i:i + rows], out[i:i + rows]
        # a copy, so that the partitioned block is freed before the mask is made
        kth = np.partition(block, n - k, axis=-1)[:, n - k:n - k + 1].copy()
        keep = block >= kth
        exact = np.count_nonzero(keep, axis=1) == k
        if exact.all():
            np.remainder(np.flatnonzero(keep).reshape(-1, k), n, out=dest)
            continue
        dest[exact] = np.flatnonzero(keep[exact]).reshape(-1, k) % n
        tied = ~exact
        sel = np.argpartition(block[tied], n - k, axis=-1)[:, n - k:]
        sel.sort(axis=-1)
        dest[tied] = sel


@functools.cache
def _pool(n: int, pid: int) -> ThreadPoolExecutor:  # noqa: ARG001 (a forked child gets its own)
    """Threads for numpy's selection, which releases the GIL: one pool per size and process,
    kept."""
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="top_indices")


def positive_entries(pre: torch.Tensor) -> tuple[list[Pattern], torch.Tensor]:
    """The positions of each seed's positive (S, B, m) pre-activations (a ReLU code) as
    patterns, with their values (S, nnz). Seeds share one entry count: those with fewer
    positive entries are padded with their first non-positive positions, which the ReLU
    zeroes (no output, no gradient)."""
    s, b, m = pre.shape
    flat = pre.reshape(s, b * m)
    found = [torch.nonzero(f > 0).squeeze(1) for f in flat]
    n = max(len(p) for p in found)
    patterns, values = [], []
    for f, p in zip(flat, found, strict=True):
        pad = n - len(p)
        if pad:
            # a prefix of rows that holds enough non-positive entries, usually the first few
            stop = min(b * m, (pad // max(1, m // 2) + 2) * m)
            while True:
                neg = torch.nonzero(f[:stop] <= 0).squeeze(1)
                if len(neg) >= pad or stop == b * m:
                    break
                stop = min(b * m, 2 * stop)
            p = torch.cat([p, neg[:pad]]).sort().values
        patterns.append(Pattern.from_flat_indices(p, b, m))
        values.append(f[p])
    return patterns, torch.stack(values)


def fired_latents(patterns: Sequence[Pattern], vals: torch.Tensor, m: int) -> torch.Tensor:
    """(S, m) bool: the latents with a positive value (S, nnz) somewhere in the batch."""
    fired = torch.zeros(len(patterns), m, dtype=vals.dtype, device=vals.device)
    for i, p in enumerate(patterns):
        fired[i].index_add_(0, p.col, (vals[i] > 0).to(vals.dtype))
    return fired > 0


def _stable_argsort(col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``argsort(col, stable=True)``; on a CPU numpy's radix sort of 16-bit keys where the
    columns fit (7x faster than torch's merge sort on a step's 16k positions)."""
    if col.device.type != "cpu":
        return torch.argsort(col, stable=True)
    keys = col.numpy().astype(np.int16 if n_cols <= np.iinfo(np.int16).max else np.int32)
    return torch.from_numpy(np.argsort(keys, kind="stable"))


def csr_code(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
             shape: tuple[int, int]) -> torch.Tensor:
    """A (B, m) code as a sparse CSR tensor (torch's "beta" warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape)


def dense_to_csr(f: torch.Tensor) -> torch.Tensor:
    """The nonzero entries of a dense (B, m) code as a CSR tensor (``Tensor.to_sparse_csr``
    took twice as long on a (4096, 1152) code on a CPU)."""
    row, col = f.nonzero(as_tuple=True)
    crow = torch.zeros(f.shape[0] + 1, dtype=torch.int64, device=f.device)
    crow[1:] = torch.bincount(row, minlength=f.shape[0]).cumsum(0)
    return csr_code(crow, col, f[row, col], tuple(f.shape))


class Pattern:
    """Positions (row, col) of the active latents of one seed's (B, m) code, row-major, with the
    transposed (column-major) order precomputed for the backward matmuls."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, row_of: Callable[..., torch.Tensor],
                 n_rows: int, n_cols: int):
        """``crow``, ``col``: the CSR structure; ``row_of(positions)``: the rows of the entries
        at these positions (in row-major order)."""
        self.shape = (n_rows, n_cols)
        self.col = col
        self.crow = crow
        self.order = _stable_argsort(col, n_cols)
        self.crow_t = torch.zeros(n_cols + 1, dtype=torch.int64, device=col.device)
        self.crow_t[1:] = torch.bincount(col, minlength=n_cols).cumsum(0)
        self.col_t = row_of(self.order)

    @classmethod
    def from_row_indices(cls, idx: torch.Tensor, n_cols: int) -> Pattern:
        """From (B, k) column indices sorted within each row."""
        b, k = idx.shape
        crow = torch.arange(0, b * k + 1, k, device=idx.device)
        return cls(crow, idx.reshape(-1), lambda pos: pos // k, b, n_cols)

    @classmethod
    def from_flat_indices(cls, flat: torch.Tensor, n_rows: int, n_cols: int) -> Pattern:
        """From sorted indices into the flattened (B * m) code."""
        row = flat // n_cols
        crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
        return cls(crow, flat % n_cols, lambda pos: row[pos], n_rows, n_cols)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values[self.order],
                                       (self.shape[1], self.shape[0]))

    def per_entry(self, per_row: torch.Tensor) -> torch.Tensor:
        """A per-row vector (B,) repeated for each entry of its row, in row-major order."""
        return torch.repeat_interleave(per_row, self.crow.diff(), output_size=len(self.col))


def _encoder_backward(g: torch.Tensor, xin: torch.Tensor, m: int,
                      patterns: Sequence[Pattern]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients into ``b_enc`` (S, m) and the encoder's (S, m, d) transpose given the active
    pre-activations' gradient ``g`` (S, nnz)."""
    s, _, d = xin.shape
    g_b = torch.zeros(s, m, dtype=g.dtype, device=g.device)
    # the encoder's gradient as its (m, d) transpose, the product the CSR matmul writes and the
    # layout the model stores W_enc in
    g_wt = torch.empty(s, m, d, dtype=xin.dtype, device=xin.device)
    for i, p in enumerate(patterns):
        g_b[i].index_add_(0, p.col, g[i])
        torch.addmm(g_wt[i], p.csr_t(g[i]), xin[i], beta=0.0, out=g_wt[i])
    return g_b, g_wt


def _bdec_through_encoder(g_benc: torch.Tensor, w_enc: torch.Tensor) -> torch.Tensor:
    """``b_dec``'s gradient through ``xin = x - b_dec``: ``-W_enc @ g_benc`` (S, d), taken on
    the stored (S, m, d) transpose, whose rows are contiguous."""
    return -torch.bmm(g_benc.unsqueeze(1), w_enc.transpose(1, 2)).squeeze(1)


def _decode_minus(vals: torch.Tensor, w_dec: torch.Tensor, patterns: Sequence[Pattern],
                  minus: torch.Tensor) -> torch.Tensor:
    """``f @ W_dec - minus`` per seed (S, B, d)."""
    out = torch.empty_like(minus)
    for i, p in enumerate(patterns):
        torch.addmm(minus[i], p.csr(vals[i]), w_dec[i], beta=-1.0, out=out[i])
    return out


def _decode_backward(vals: torch.Tensor, w_dec: torch.Tensor, g: torch.Tensor,
                     patterns: Sequence[Pattern],
                     row_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``f @ W_dec`` into the active values (S, nnz) and ``W_dec`` given the
    output's gradient ``row_scale[:, :, None] * g`` (S, B, d): the scale goes onto the nnz
    entries, not onto a (B, d) copy of ``g``."""
    g_v = torch.empty_like(vals)
    g_w = torch.empty_like(w_dec)
    for i, p in enumerate(patterns):
        scale = p.per_entry(row_scale[i])
        g_v[i] = torch.sparse.sampled_addmm(p.csr(vals[i]), g[i], w_dec[i].T,
                                            beta=0.0).values() * scale
        # (m, d), W_dec's own layout: written in place
        torch.addmm(g_w[i], p.csr_t(vals[i] * scale), g[i], beta=0.0, out=g_w[i])
    return g_v, g_w


class SparseCodeError(torch.autograd.Function):
    """A sparse code's reconstruction loss in one node: the ReLU of the active pre-activations
    ``values`` (S, nnz), their CSR decode ``f @ W_dec`` and its per-token squared error against
    ``target`` (S, B, d). Outputs the error (S, B), the residual ``r = f @ W_dec - target``
    (S, B, d; not differentiable) and the ReLU'd values (S, nnz): a penalty on these (ReLU's
    L1) back-propagates into the encoder through the same pass.

    The main loss has ``target = xin = x - b_dec`` (so ``r = x_hat - x``, and ``b_dec`` is part
    of ``x_hat``); AuxK decodes without ``b_dec`` against the main loss's residual. Backward
    into ``W_enc``, ``b_enc``, ``W_dec`` and ``b_dec`` (``values`` are computed without gradient
    by the caller: they were needed to choose the positions). On a CPU it is one compiled pass
    over each latent's entries (:func:`._kernels.code_error_backward`); otherwise torch's CSR
    products, each token's ``2 g`` applied to the nnz values rather than to a (B, d) copy of
    ``r``. ``b_dec``'s gradient is ``-W_enc @ g_benc`` through ``xin``, plus ``sum_b 2 g_b r_b``
    where ``b_dec`` is part of the decode (``bdec_in_decode``)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, xin: torch.Tensor, target: torch.Tensor,
                b_dec: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                w_dec: torch.Tensor, patterns: Sequence[Pattern],
                bdec_in_decode: bool) -> tuple[torch.Tensor, ...]:
        vals = torch.relu(values)
        if _use_kernels(vals, w_dec, target):
            r = torch.empty_like(target)
            err = target.new_empty(target.shape[:2])
            for i, p in enumerate(patterns):
                _kernels.decode_error(p.crow.numpy(), p.col.numpy(), vals[i].numpy(),
                                      w_dec[i].detach().numpy(), target[i].detach().numpy(),
                                      r[i].numpy(), err[i].numpy())
        else:
            r = _decode_minus(vals, w_dec, patterns, target)
            # ||r||^2 per token; einsum here runs S*B (1, d) x (d, 1) matmuls, slow for S > 1
            err = torch.linalg.vector_norm(r, dim=-1).square_()
        ctx.save_for_backward(vals, xin, w_enc, w_dec, r)
        ctx.patterns = patterns
        ctx.bdec_in_decode = bdec_in_decode
        ctx.mark_non_differentiable(r)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for r, or vals if unused
        return err, r, vals

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, g_r: Any,
                 g_vals: torch.Tensor | None) -> tuple[Any, ...]:
        vals, xin, w_enc, w_dec, r = ctx.saved_tensors
        patterns = ctx.patterns
        g2 = 2.0 * g if g is not None else r.new_zeros(r.shape[:2])
        if g_vals is None:
            g_vals = torch.zeros_like(vals)
        if _use_kernels(vals, xin, w_dec, r):
            s, m, d = w_dec.shape
            g_wd = torch.empty_like(w_dec)
            g_wt = torch.empty(s, m, d, dtype=xin.dtype)
            g_be = torch.empty(s, m, dtype=vals.dtype)
            for i, p in enumerate(patterns):
                _kernels.code_error_backward(
                    p.crow_t.numpy(), p.col_t.numpy(), p.order.numpy(), vals[i].numpy(),
                    g_vals[i].contiguous().numpy(), w_dec[i].detach().numpy(), r[i].numpy(),
                    g2[i].contiguous().numpy(),
                    xin[i].numpy(), g_wd[i].numpy(), g_wt[i].numpy(), g_be[i].numpy())
        else:
            g_v, g_wd = _decode_backward(vals, w_dec, r, patterns, g2)
            g_be, g_wt = _encoder_backward((g_v + g_vals) * (vals > 0), xin, w_dec.shape[1],
                                           patterns)
        need = ctx.needs_input_grad
        g_bdec = None
        if need[3]:
            g_bdec = _bdec_through_encoder(g_be, w_enc)
            if ctx.bdec_in_decode:
                g_bdec += torch.bmm(g2.unsqueeze(1), r).squeeze(1)
        return (None, None, None, g_bdec, g_wt.transpose(1, 2) if need[4] else None,
                g_be if need[5] else None, g_wd if need[6] else None, None, None)


def _use_kernels(*tensors: torch.Tensor) -> bool:
    return USE_KERNELS and _kernels.applies(*tensors)


def sparse_code_error(values: torch.Tensor, xin: torch.Tensor, b_dec: torch.Tensor,
                      w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor,
                      patterns: Sequence[Pattern],
                      target: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(err, r, f)``: the per-token squared error (S, B) of the sparse code whose active
    pre-activations are ``values`` (S, nnz), differentiable into the encoder, decoder and
    ``b_dec``; the detached residual ``r`` (S, B, d); the ReLU'd values (S, nnz),
    differentiable into the encoder and ``b_dec``.
    ``xin`` is the encoder's input ``x - b_dec`` (S, B, d), computed without gradient by the
    caller. Without ``target``, the code's reconstruction ``f @ W_dec + b_dec`` is compared with
    ``x`` (``r = x_hat - x``); with it, ``f @ W_dec`` alone is compared with ``target``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if target is None:
            return SparseCodeError.apply(values, xin, xin, b_dec, w_enc, b_enc, w_dec, patterns,
                                         True)
        return SparseCodeError.apply(values, xin, target, b_dec, w_enc, b_enc, w_dec, patterns,
                                     False)
