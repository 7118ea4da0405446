"""CSR matmuls through the active latents only: the CPU training path of the TopK family.

On a CPU a dense (B, m) code costs a full matmul although only k of m latents are active; these
autograd functions decode through the active rows and back-propagate into the encoder through
the selected pre-activations only. Every seed of a stack keeps the same number of active
entries per step, so values are (S, nnz) and each seed has its own :class:`Pattern`; the seeds
are processed in a loop inside the functions and their gradients written into stacked tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest entries along the last dimension of ``x``, in increasing
    order within each row (the column order CSR rows need); ties are broken arbitrarily.

    On a CPU this is numpy's introselect (``argpartition``): ``torch.topk`` there took 3x as
    long on a training step's (512, 1152) pre-activations."""
    n = x.shape[-1]
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 0 < k < n:
        a = x.detach().reshape(-1, n).numpy()
        idx = np.argpartition(a, n - k, axis=-1)[:, n - k:]
        idx.sort(axis=-1)
        return torch.from_numpy(idx).view(*x.shape[:-1], k)
    return x.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


def _stable_argsort(col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``argsort(col, stable=True)``; on a CPU numpy's radix sort of 16-bit keys where the
    columns fit (7x faster than torch's merge sort on a step's 16k positions)."""
    if col.device.type != "cpu":
        return torch.argsort(col, stable=True)
    keys = col.numpy().astype(np.int16 if n_cols <= np.iinfo(np.int16).max else np.int32)
    return torch.from_numpy(np.argsort(keys, kind="stable"))


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


class SparsePre(torch.autograd.Function):
    """Pre-activations at the active positions, ``(xin @ W_enc + b_enc)[row, col]`` per seed,
    where ``xin = x - b_dec``.

    The values are computed outside (they were needed to choose the positions); this function
    supplies the sparse backward into ``b_dec`` (S, d), ``W_enc`` (S, d, m) and ``b_enc``. The
    input rows ``x`` carry no gradient, so ``b_dec``'s is the batch sum of ``-d xin``, which is
    ``-W_enc @ d b_enc``: one matrix-vector product instead of a (B, d) sparse matmul.
    """

    @staticmethod
    def forward(ctx: Any, xin: torch.Tensor, b_dec: torch.Tensor, w_enc: torch.Tensor,
                b_enc: torch.Tensor, values: torch.Tensor,
                patterns: Sequence[Pattern]) -> torch.Tensor:
        ctx.save_for_backward(xin, w_enc)
        ctx.patterns = patterns
        return values.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        xin, w_enc = ctx.saved_tensors
        need_bdec, need_w = ctx.needs_input_grad[1:3]
        s, d, m = w_enc.shape
        g_b = torch.zeros(s, m, dtype=g.dtype, device=g.device)
        # the encoder's gradient as its (m, d) transpose, the product the CSR matmul writes;
        # returned as a transposed view, the layout the model stores W_enc in
        g_wt = torch.empty(s, m, d, dtype=w_enc.dtype, device=w_enc.device) if need_w else None
        for i, p in enumerate(ctx.patterns):
            g_b[i].index_add_(0, p.col, g[i])
            if g_wt is not None:
                torch.addmm(g_wt[i], p.csr_t(g[i]), xin[i], beta=0.0, out=g_wt[i])
        g_w = g_wt.transpose(1, 2) if g_wt is not None else None
        g_bdec = -torch.bmm(w_enc, g_b.unsqueeze(-1)).squeeze(-1) if need_bdec else None
        return None, g_bdec, g_w, g_b if ctx.needs_input_grad[3] else None, None, None


def _decode(vals: torch.Tensor, w_dec: torch.Tensor, patterns: Sequence[Pattern],
            minus: torch.Tensor | None = None) -> torch.Tensor:
    """``f @ W_dec`` per seed (S, B, d), less ``minus`` (S, B, d) if given."""
    out = w_dec.new_empty(len(patterns), patterns[0].shape[0], w_dec.shape[2])
    for i, p in enumerate(patterns):
        if minus is None:
            torch.addmm(out[i], p.csr(vals[i]), w_dec[i], beta=0.0, out=out[i])
        else:
            torch.addmm(minus[i], p.csr(vals[i]), w_dec[i], beta=-1.0, out=out[i])
    return out


def _decode_backward(vals: torch.Tensor, w_dec: torch.Tensor, g: torch.Tensor,
                     patterns: Sequence[Pattern], need_v: bool,
                     need_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``f @ W_dec`` into the active values (S, nnz) and ``W_dec`` given the
    output's gradient ``g`` (S, B, d)."""
    g_v = torch.empty_like(vals) if need_v else None
    g_w = torch.empty_like(w_dec) if need_w else None
    for i, p in enumerate(patterns):
        if g_v is not None:
            g_v[i] = torch.sparse.sampled_addmm(p.csr(vals[i]), g[i], w_dec[i].T,
                                                beta=0.0).values()
        if g_w is not None:  # (m, d), W_dec's own layout: written in place
            torch.addmm(g_w[i], p.csr_t(vals[i]), g[i], beta=0.0, out=g_w[i])
    return g_v, g_w


class SparseDecode(torch.autograd.Function):
    """``f @ W_dec`` per seed for codes with values ``vals`` (S, nnz) at the patterns."""

    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, w_dec: torch.Tensor,
                patterns: Sequence[Pattern]) -> torch.Tensor:
        ctx.save_for_backward(vals, w_dec)
        ctx.patterns = patterns
        return _decode(vals, w_dec, patterns)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        vals, w_dec = ctx.saved_tensors
        return (*_decode_backward(vals, w_dec, g, ctx.patterns, *ctx.needs_input_grad[:2]),
                None)


class SparseDecodeError(torch.autograd.Function):
    """Per-token squared error ``||f @ W_dec + b_dec - x||^2`` (S, B) of the sparse codes, from
    ``xin = x - b_dec``, with the residual ``r = x_hat - x`` (S, B, d) as a second,
    non-differentiable output.

    One autograd node for decode and loss: the backward forms ``2 g r`` once and sends it
    through the same CSR products as :class:`SparseDecode`; ``b_dec``'s gradient through
    ``x_hat`` is its batch sum (its gradient through the encoder comes from
    :class:`SparsePre`)."""

    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor,
                xin: torch.Tensor, patterns: Sequence[Pattern]) -> tuple[torch.Tensor, ...]:
        r = _decode(vals, w_dec, patterns, minus=xin)
        ctx.save_for_backward(vals, w_dec, r)
        ctx.patterns = patterns
        ctx.mark_non_differentiable(r)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for r
        return torch.einsum("sbd,sbd->sb", r, r), r

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _: Any) -> tuple[Any, ...]:
        vals, w_dec, r = ctx.saved_tensors
        need_v, need_w, need_b = ctx.needs_input_grad[:3]
        gr = r * (2.0 * g).unsqueeze(-1)
        g_v, g_w = _decode_backward(vals, w_dec, gr, ctx.patterns, need_v, need_w)
        return g_v, g_w, gr.sum(1) if need_b else None, None, None


def sparse_code(xin: torch.Tensor, b_dec: torch.Tensor, w_enc: torch.Tensor,
                b_enc: torch.Tensor, values: torch.Tensor,
                patterns: Sequence[Pattern]) -> torch.Tensor:
    """ReLU'd active values (S, nnz), differentiable into the encoder and ``b_dec``; ``xin`` is
    ``x - b_dec`` (S, B, d), computed without gradient by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.relu(SparsePre.apply(xin, b_dec, w_enc, b_enc, values, patterns))


def sparse_decode(vals: torch.Tensor, w_dec: torch.Tensor,
                  patterns: Sequence[Pattern]) -> torch.Tensor:
    """``f @ W_dec`` (S, B, d) of the sparse codes, differentiable into both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SparseDecode.apply(vals, w_dec, patterns)


def sparse_squared_error(vals: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor,
                         xin: torch.Tensor,
                         patterns: Sequence[Pattern]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(err, r)``: the per-token squared error (S, B) of ``x_hat = f @ W_dec + b_dec``
    against ``x = xin + b_dec``, differentiable into ``vals``, ``W_dec`` and ``b_dec``, and
    the detached residual ``r = x_hat - x`` (S, B, d)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SparseDecodeError.apply(vals, w_dec, b_dec, xin, patterns)
