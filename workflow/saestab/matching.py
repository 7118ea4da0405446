"""Matching SAE features across seeds by the cosine similarity of their decoder directions.

Feature ``i`` of SAE ``A`` *reappears* in SAE ``B`` when ``max_j cos(d_i^A, d_j^B) >= theta``,
where ``d`` are L2-normalised decoder rows. The main rule is this argmax (many-to-one) match; the
one-to-one Hungarian assignment is the robustness check (:func:`matching_iou`).

:func:`pairwise_max_cosine` computes the best-match cosine and its index for every ordered pair
of SAEs of one configuration, never holding more than ``max_block_bytes`` of similarities at once.
Two savings over the naive loop over ordered pairs:

* symmetry: one block ``D_a[rows] @ D_b^T`` gives both the row maxima (a -> b) and, accumulated
  over row chunks, the column maxima (b -> a), so each unordered pair is multiplied once;
* stacking: a chunk of anchor ``a``'s rows is multiplied against a contiguous block of several
  reference SAEs at once (one larger GEMM instead of several small ones).

The default stacks, for fewer and larger GEMMs; whether that pays depends on the machine and
the thread count, and ``bench/stability_scaling.py --compare-blocking`` measures it (not yet on
a GPU, where a single small product would underfill the device).

Stored tables are compact: float16 maxima (spacing 4.9e-4 near 0.7, so a cosine within 2.4e-4 of
``theta`` may land on either side of it) and int32 argmax indices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from . import io
from .logs import get_logger, progress

log = get_logger("matching")

FORMAT = "saestab.pairwise-maxcos"
VERSION = 1
DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20

ArrayLike = torch.Tensor | np.ndarray


def _to_tensor(x: ArrayLike, device: str | torch.device) -> torch.Tensor:
    """``x`` as a float32 tensor on ``device`` (no copy when it already is one)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.detach().to(device=device, dtype=torch.float32)


def normalize_rows(x: ArrayLike, device: str | torch.device = "cpu") -> torch.Tensor:
    """L2-normalised rows of ``x`` (float32 on ``device``); all-zero rows stay zero."""
    t = _to_tensor(x, device)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def max_cosine(A: ArrayLike, B: ArrayLike, chunk_size: int = 4096,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Best-match cosine of each row of ``A`` among the rows of ``B``.

    ``A`` (m_A, d) and ``B`` (m_B, d) are decoder directions (re-normalised here, so unit rows are
    not required). Rows of ``A`` are processed ``chunk_size`` at a time, so at most a
    ``chunk_size x m_B`` block of cosines exists at once. Returns ``(maxcos, argmax)``: float32
    and int64 numpy arrays of shape (m_A,).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    a = normalize_rows(A, device)
    b = normalize_rows(B, device)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (m_A, d) and (m_B, d) with the same d, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    vals = torch.empty(a.shape[0], dtype=torch.float32, device=device)
    idx = torch.empty(a.shape[0], dtype=torch.int64, device=device)
    bt = b.T
    with torch.no_grad():
        for i0 in range(0, a.shape[0], chunk_size):
            v, j = (a[i0:i0 + chunk_size] @ bt).max(dim=1)
            vals[i0:i0 + chunk_size] = v
            idx[i0:i0 + chunk_size] = j
    return vals.cpu().numpy(), idx.cpu().numpy()


def _unit_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its rows are already unit-norm (within 1e-5), else a normalised copy."""
    norms = t.norm(dim=-1, keepdim=True)
    if t.numel() and (norms - 1).abs().max() <= 1e-5:
        return t
    return t / norms.clamp_min(1e-12)


def stack_directions(dirs: Sequence[Any] | ArrayLike, device: str | torch.device = "cpu",
                     loader: Callable[[Any], ArrayLike] | None = None) -> torch.Tensor:
    """Normalised (S, m, d) float32 stack of S SAEs' decoder directions on ``device``.

    ``dirs`` is one (S, m, d) array/tensor (used without a copy when it is already float32 with
    unit rows on ``device``) or a sequence of S (m, d) items, each passed through ``loader``
    first if given (e.g. to load an SAE), converted and copied into the stack one at a time.
    """
    if isinstance(dirs, torch.Tensor | np.ndarray):
        stacked = _to_tensor(dirs, device)
        if stacked.ndim != 3:
            raise ValueError(f"expected S directions of shape (m, d), got {tuple(stacked.shape)}")
        return _unit_rows(stacked)
    out: torch.Tensor | None = None
    for s, item in enumerate(dirs):
        x = _to_tensor(loader(item) if loader is not None else item, device)
        if out is None:
            if x.ndim != 2:
                raise ValueError(f"expected directions of shape (m, d), got {tuple(x.shape)}")
            out = torch.empty((len(dirs), *x.shape), dtype=torch.float32, device=device)
        elif x.shape != out.shape[1:]:
            raise ValueError(f"all SAEs must have the same (d_sae, d_in): SAE 0 has "
                             f"{tuple(out.shape[1:])}, SAE {s} has {tuple(x.shape)}")
        out[s] = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if out is None:
        raise ValueError("no directions given")
    return out


MIN_STACK_ROWS = 1024
"""Row chunks are shrunk down to this many rows (not below) to stack more reference SAEs."""


def _plan(m: int, n_ref: int, chunk_size: int, max_block_bytes: int,
          refs_per_block: int | None) -> tuple[int, int]:
    """Anchor rows per chunk and reference SAEs per block: a (rows, refs * m) float32 block
    within ``max_block_bytes``, stacking up to ``refs_per_block`` (None: all ``n_ref``)."""
    want = max(1, n_ref if refs_per_block is None else min(refs_per_block, n_ref))
    rows = min(chunk_size, m)
    rows = max(min(rows, MIN_STACK_ROWS), min(rows, max_block_bytes // (4 * m * want)))
    rows = max(1, min(rows, max_block_bytes // (4 * m)))
    refs = max(1, min(want, max_block_bytes // (4 * m * rows)))
    return rows, refs


def _column_max(x: torch.Tensor, group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim=0)`` of a 2-D block (values, int64 indices), computed in two passes.

    On CPU ``torch.max(dim=0)`` of a block larger than the cache is much slower than
    ``amax`` (``bench/stability_scaling.py --compare-kernels``); so take ``amax`` over groups of
    ``group`` rows, pick the best group per column and find the row inside it with a small gather.
    """
    c, n = x.shape
    G = c // group
    if G < 2:
        return x.max(dim=0)
    main = x[:G * group]
    best, g = main.view(G, group, n).amax(dim=1).max(dim=0)
    rows = g[None, :] * group + torch.arange(group, device=x.device)[:, None]
    idx = g * group + main.gather(0, rows).argmax(dim=0)
    if G * group < c:
        rv, ri = x[G * group:].max(dim=0)
        better = rv > best
        best = torch.where(better, rv, best)
        idx = torch.where(better, ri + G * group, idx)
    return best, idx


def _matmul_into(x: torch.Tensor, refs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = x @ refs.T`` for 2-D float32 tensors (``out`` contiguous).

    On CPU the product goes through numpy's BLAS (OpenBLAS in the numpy wheels), chosen over
    torch's CPU build for speed on these block shapes in multi-threaded runs; which is faster
    depends on the machine and the thread count, and ``bench/stability_scaling.py
    --compare-kernels`` compares the two. Other devices use torch.
    """
    if out.device.type == "cpu":
        np.matmul(x.numpy(), refs.numpy().T, out=out.numpy())
    else:
        torch.mm(x, refs.T, out=out)
    return out


def pairwise_max_cosine(dirs: Sequence[ArrayLike] | ArrayLike, chunk_size: int = 4096,
                        device: str | torch.device = "cpu",
                        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
                        refs_per_block: int | None = None,
                        value_dtype: type[np.floating] = np.float16,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Best-match cosine and index for every ordered pair of S SAEs with m features each.

    ``dirs`` is a list of S (m, d) arrays or tensors, or one (S, m, d) array (see
    :func:`stack_directions`). Returns ``(maxcos, argmax)`` of shapes (S, S, m):
    ``maxcos[a, b, i] = max_j cos(d_i^a, d_j^b)`` as ``value_dtype`` (float16 by default) and
    ``argmax[a, b, i]`` its ``j`` as int32; the diagonal ``a == b`` holds 1.0 and ``arange(m)``.

    Each unordered pair is multiplied once (row maxima give a -> b, column maxima b -> a). The
    cosine block held at once is at most ``max_block_bytes`` (rows of the anchor, at most
    ``chunk_size``, times ``refs_per_block`` reference SAEs times m, float32); ``refs_per_block``
    None stacks as many reference SAEs as fit. Besides that block (and reductions of it about a
    tenth its size), memory is the (S, m, d) stack of directions on ``device`` (no copy for a
    unit-norm float32 (S, m, d) input) and the outputs (6 bytes per entry with float16).
    """
    d_all = stack_directions(dirs, device)
    S, m, _ = d_all.shape
    maxcos = np.ones((S, S, m), dtype=value_dtype)
    argmax = np.broadcast_to(np.arange(m, dtype=np.int32), (S, S, m)).copy()
    plans = [_plan(m, S - 1 - a, chunk_size, max_block_bytes, refs_per_block)
             for a in range(S - 1)]
    buf = torch.empty(max((r * k * m for r, k in plans), default=0), dtype=torch.float32,
                      device=d_all.device)
    with torch.no_grad():
        for a in progress(range(S - 1), desc="pairwise max-cosine", unit="anchor", logger=log):
            n_ref = S - 1 - a  # references b > a, contiguous in the stack
            rows, refs = plans[a]
            col_val = torch.full((n_ref, m), -2.0, dtype=torch.float32, device=device)
            col_idx = torch.zeros((n_ref, m), dtype=torch.int64, device=device)
            for i0 in range(0, m, rows):
                x = d_all[a, i0:i0 + rows]
                c = x.shape[0]
                for r0 in range(0, n_ref, refs):
                    k = min(refs, n_ref - r0)
                    b0 = a + 1 + r0
                    block = _matmul_into(x, d_all[b0:b0 + k].reshape(k * m, -1),
                                         buf[:c * k * m].view(c, k * m)).view(c, k, m)
                    rv, ri = block.max(dim=2)  # (c, k): a -> b for these rows
                    maxcos[a, b0:b0 + k, i0:i0 + c] = rv.T.cpu().numpy()
                    argmax[a, b0:b0 + k, i0:i0 + c] = ri.T.cpu().numpy()
                    cv, ci = _column_max(block.view(c, k * m))  # b -> a among these rows
                    cv, ci = cv.view(k, m), ci.view(k, m)
                    better = cv > col_val[r0:r0 + k]
                    col_val[r0:r0 + k] = torch.where(better, cv, col_val[r0:r0 + k])
                    col_idx[r0:r0 + k] = torch.where(better, ci + i0, col_idx[r0:r0 + k])
            maxcos[a + 1:, a] = col_val.cpu().numpy()
            argmax[a + 1:, a] = col_idx.cpu().numpy()
    return maxcos, argmax


def cosine_matrix(A: ArrayLike, B: ArrayLike, device: str | torch.device = "cpu") -> np.ndarray:
    """Full (m_A, m_B) float32 cosine matrix (for small inputs and the Hungarian check)."""
    return (normalize_rows(A, device) @ normalize_rows(B, device).T).cpu().numpy()


def hungarian_match(A: ArrayLike, B: ArrayLike, device: str | torch.device = "cpu"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of A's rows to B's rows maximising the total cosine.

    Returns ``(row_ind, col_ind, cos)`` from ``scipy.optimize.linear_sum_assignment`` with
    ``cos[k] = cos(A[row_ind[k]], B[col_ind[k]])``; ``min(m_A, m_B)`` pairs. Builds the full
    cosine matrix and costs O(m^3) time, so use it on a few pairs, not on all of them.
    """
    cos = cosine_matrix(A, B, device)
    row_ind, col_ind = linear_sum_assignment(cos, maximize=True)
    return row_ind, col_ind, cos[row_ind, col_ind]


def matching_iou(A: ArrayLike, B: ArrayLike, theta: float = 0.7,
                 device: str | torch.device = "cpu") -> float:
    """IoU of the sets of A's features matched at ``theta`` by argmax and by Hungarian matching.

    1.0 when both sets are empty (the rules agree that nothing matches).
    """
    maxcos, _ = max_cosine(A, B, device=device)
    by_argmax = set(np.flatnonzero(maxcos >= theta).tolist())
    row_ind, _, cos = hungarian_match(A, B, device=device)
    by_hungarian = set(row_ind[cos >= theta].tolist())
    union = by_argmax | by_hungarian
    return 1.0 if not union else len(by_argmax & by_hungarian) / len(union)


# ------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------
def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON metadata file that accompanies a pairwise table: ``x.npz`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def save_pairwise(path: str | os.PathLike, maxcos: np.ndarray, argmax: np.ndarray,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write ``maxcos``/``argmax`` to ``path`` (.npz) and metadata to :func:`sidecar_path`.

    Both files are written atomically. ``metadata`` (JSON-serialisable, e.g. SAE names, seeds,
    checksums) is stored beside the shapes and dtypes. Returns the sidecar's path.
    """
    maxcos = np.asarray(maxcos)
    argmax = np.asarray(argmax)
    if maxcos.ndim != 3 or maxcos.shape != argmax.shape or maxcos.shape[0] != maxcos.shape[1]:
        raise ValueError(f"expected (S, S, m) maxcos and argmax, got {maxcos.shape} and "
                         f"{argmax.shape}")
    with io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, maxcos=maxcos, argmax=argmax)
    meta = {"format": FORMAT, "version": VERSION, "n_saes": maxcos.shape[0],
            "n_features": maxcos.shape[2], "maxcos_dtype": str(maxcos.dtype),
            "argmax_dtype": str(argmax.dtype), "metadata": metadata or {}}
    side = sidecar_path(path)
    io.write_json(side, meta)
    return side


def load_pairwise(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a table written by :func:`save_pairwise`: ``(maxcos, argmax, metadata)``.

    Raises :class:`saestab.io.InputError` naming the file if it is missing, corrupt or does not
    agree with its sidecar.
    """
    path = Path(path)
    meta = io.read_json(sidecar_path(path), what="pairwise max-cosine metadata (JSON sidecar)")
    z = io.load_npz(path, ("maxcos", "argmax"), "pairwise max-cosine table (.npz)")
    maxcos, argmax = z["maxcos"], z["argmax"]
    if meta.get("format") != FORMAT:
        raise io.InputError(f"{sidecar_path(path)}: expected format {FORMAT!r}, got "
                            f"{meta.get('format')!r}")
    want = (meta["n_saes"], meta["n_saes"], meta["n_features"])
    if maxcos.shape != want or argmax.shape != want:
        raise io.InputError(f"{path}: arrays of shape {maxcos.shape}/{argmax.shape} do not "
                            f"match the sidecar's {want}")
    return maxcos, argmax, meta["metadata"]

