"""Activation caches: one forward pass written once to disk, read many times.

On-disk layout of one cache (a directory)::

    header.json        format, model, weights, hook, d, n_tokens, dtype, shards, what was dropped,
                       normalisation statistics, throughput
    acts-00000.npy     (n_i, d) activations of the kept positions, .npy, memory-mappable
    acts-00001.npy     ...
    token_ids.npy      (n_tokens,) int32: the current token at each kept position
    positions.npy      (n_tokens, 2) int32: (context index, position in context) of each kept row
    contexts.npy       (n_contexts, T) int32: the token contexts that were run, so that any row's
                       surrounding text can be shown later

Positions that are not text never reach the file: BOS positions (their residual norm is orders of
magnitude above the rest in many models) and "massive activation" outliers whose norm exceeds
``outlier_factor`` times the median norm. The header records how many were dropped and where.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .logs import get_logger, progress

FORMAT = "saestab.activation-cache"
VERSION = 1
_DTYPES = {"float32": np.float32, "float16": np.float16}

log = get_logger("activations")


def hook_layer(hook: str) -> int | None:
    """The block index a hook point lives in (``blocks.15.hook_resid_post`` -> 15), else None."""
    m = re.match(r"^blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CacheStats:
    """Normalisation statistics of a cache, accumulated in float64 over the kept rows."""

    mean: np.ndarray  # (d,)
    mean_sq_norm: float  # E ||x||^2
    centered_sq_norm: float  # E ||x - mean||^2 (the EV denominator per token)
    median_norm: float

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "mean_sq_norm": self.mean_sq_norm,
            "centered_sq_norm": self.centered_sq_norm,
            "median_norm": self.median_norm,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CacheStats:
        return cls(
            mean=np.asarray(obj["mean"], dtype=np.float64),
            mean_sq_norm=float(obj["mean_sq_norm"]),
            centered_sq_norm=float(obj["centered_sq_norm"]),
            median_norm=float(obj["median_norm"]),
        )


class ActivationCache:
    """Read access to a cache directory written by :func:`write_cache`.

    ``cache.acts(i)`` memory-maps shard ``i``; :meth:`load` concatenates a row range into RAM;
    :meth:`iter_batches` streams rows in a given order without loading everything.
    """

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.header = header
        self.d: int = int(header["d"])
        self.n_tokens: int = int(header["n_tokens"])
        self.dtype = np.dtype(header["dtype"])
        self.stats = CacheStats.from_json(header["stats"])
        self._offsets = np.cumsum([0] + [int(s["n"]) for s in header["shards"]])

    # -- opening and validation -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> ActivationCache:
        """Open and validate a cache; raises :class:`saestab.io.InputError` naming what is wrong."""
        path = Path(path)
        header = io.read_json(path / "header.json", what="activation-cache header")
        if header.get("format") != FORMAT:
            raise io.InputError(f"{path / 'header.json'}: not an activation cache "
                                f"(format={header.get('format')!r}, expected {FORMAT!r})")
        if int(header.get("version", -1)) > VERSION:
            raise io.InputError(f"{path}: cache format version {header['version']} is newer than "
                                f"this library understands ({VERSION})")
        cache = cls(path, header)
        total = 0
        for s in header["shards"]:
            f = path / s["file"]
            arr = cache._load(f, "activation shard listed in the header")
            if arr.shape != (int(s["n"]), cache.d) or arr.dtype != cache.dtype:
                raise io.InputError(f"{f}: expected shape ({s['n']}, {cache.d}) {cache.dtype}, "
                                    f"found {arr.shape} {arr.dtype} (corrupt or partial cache). "
                                    f"{cache.remedy}")
            total += arr.shape[0]
        if total != cache.n_tokens:
            raise io.InputError(f"{path}: shards hold {total} rows, header says "
                                f"{cache.n_tokens}. {cache.remedy}")
        for name, shape in (("token_ids.npy", (cache.n_tokens,)),
                            ("positions.npy", (cache.n_tokens, 2))):
            arr = cache._load(path / name, "cache index array")
            if arr.shape != shape:
                raise io.InputError(f"{path / name}: expected shape {shape}, found {arr.shape}. "
                                    f"{cache.remedy}")
        return cache

    @property
    def remedy(self) -> str:
        """What to do about a broken file in this cache: the cache is one ``directory()`` output,
        so Snakemake rebuilds it only when the whole directory is gone."""
        rule = "synthetic_cache" if self.header.get("weights") == "synthetic" else \
            "cache_activations"
        return (f"Delete the directory {self.path} and rerun snakemake (rule {rule} rebuilds "
                "it).")

    def _load(self, file: Path, what: str) -> np.ndarray:
        return io.load_npy(file, what, mmap=True, remedy=self.remedy)

    # -- data access ------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return len(self.header["shards"])

    def acts(self, i: int) -> np.ndarray:
        """Shard ``i`` as a read-only memory map of shape (n_i, d)."""
        return self._load(self.path / self.header["shards"][i]["file"], "activation shard")

    def load(self, start: int = 0, stop: int | None = None,
             dtype: np.dtype | type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as one in-memory array (written into ``out`` if given)."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        if not 0 <= start <= stop:
            raise IndexError(f"row range [{start}, {stop}) outside 0..{self.n_tokens}")
        if out is None:
            out = np.empty((stop - start, self.d), dtype=dtype)
        elif out.shape != (stop - start, self.d):
            raise ValueError(f"out has shape {out.shape}, rows [{start}, {stop}) need "
                             f"{(stop - start, self.d)}")
        for i in range(self.n_shards):
            lo, hi = self._offsets[i], self._offsets[i + 1]
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                out[a - start:b - start] = self.acts(i)[a - lo:b - lo]
        return out

    def rows(self, index: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Rows at arbitrary (sorted or unsorted) global indices."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.d), dtype=dtype)
        shard_of = np.searchsorted(self._offsets, index, side="right") - 1
        for i in np.unique(shard_of):
            sel = np.nonzero(shard_of == i)[0]
            out[sel] = self.acts(int(i))[index[sel] - self._offsets[i]]
        return out

    def iter_batches(self, batch_size: int, order: np.ndarray | None = None,
                     dtype: np.dtype | type = np.float32) -> Iterator[np.ndarray]:
        """Stream rows in ``order`` (default: stored order) in batches of ``batch_size``."""
        if order is None:
            for start in range(0, self.n_tokens, batch_size):
                yield self.load(start, start + batch_size, dtype=dtype)
        else:
            for start in range(0, len(order), batch_size):
                yield self.rows(order[start:start + batch_size], dtype=dtype)

    def token_ids(self) -> np.ndarray:
        return self._load(self.path / "token_ids.npy", "cache array")

    def positions(self) -> np.ndarray:
        return self._load(self.path / "positions.npy", "cache array")

    def contexts(self) -> np.ndarray:
        return self._load(self.path / "contexts.npy", "cache array")

    def __repr__(self) -> str:
        h = self.header
        return (f"ActivationCache({self.path}, model={h.get('model')}, weights={h.get('weights')}, "
                f"hook={h.get('hook')}, n_tokens={self.n_tokens}, d={self.d})")


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
ForwardFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a (B, T) int64 token batch to its (B, T, d) activations at the cached hook point."""


def write_cache(
    out_dir: str | Path,
    forward: ForwardFn,
    contexts: np.ndarray,
    *,
    d: int,
    bos_token_id: int | None,
    batch_size: int = 16,
    outlier_factor: float | None = 10.0,
    dtype: str = "float32",
    shard_tokens: int = 1 << 16,
    device: str | torch.device = "cpu",
    meta: dict[str, Any] | None = None,
) -> ActivationCache:
    """Run ``forward`` over ``contexts`` and write the activation cache to ``out_dir`` atomically.

    Parameters
    ----------
    forward:
        Token batch -> activations at the hook (see :data:`ForwardFn`).
    contexts:
        (n_contexts, T) token ids.
    bos_token_id:
        Positions holding this token are dropped (None: drop nothing for BOS).
    outlier_factor:
        Rows whose L2 norm exceeds ``outlier_factor * median_norm`` are dropped (None: keep all).
    meta:
        Extra header fields (model, weights, hook, ...).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    contexts = np.ascontiguousarray(contexts, dtype=np.int64)
    if contexts.ndim != 2 or contexts.shape[0] == 0:
        raise ValueError(f"contexts must be a non-empty (n, T) array, got shape {contexts.shape}")
    n_ctx, T = contexts.shape
    out_dir = Path(out_dir)
    np_dtype = _DTYPES[dtype]

    with io.atomic_path(out_dir) as tmp:
        tmp.mkdir()
        # Pass 1: forward, keep every non-BOS row in a raw float32 memmap, with norms.
        max_rows = n_ctx * T
        raw = np.lib.format.open_memmap(tmp / "raw.npy", mode="w+", dtype=np.float32,
                                        shape=(max_rows, d))
        norms = np.empty(max_rows, dtype=np.float32)
        tok = np.empty(max_rows, dtype=np.int32)
        pos = np.empty((max_rows, 2), dtype=np.int32)
        n = 0
        n_bos = 0
        t0 = time.perf_counter()
        batches = range(0, n_ctx, batch_size)
        with torch.inference_mode():
            for start in progress(batches, total=len(batches), desc="caching", unit="batch"):
                batch = torch.from_numpy(contexts[start:start + batch_size]).to(device)
                acts = forward(batch)
                if acts.shape[:2] != batch.shape or acts.shape[-1] != d:
                    raise RuntimeError(f"forward returned shape {tuple(acts.shape)}, expected "
                                       f"({batch.shape[0]}, {T}, {d})")
                acts = acts.float().reshape(-1, d).cpu().numpy()
                ids = contexts[start:start + batch_size].reshape(-1)
                ci, pi = np.divmod(np.arange(len(ids)) + start * T, T)
                keep = (np.ones(len(ids), dtype=bool) if bos_token_id is None
                        else ids != bos_token_id)
                n_bos += int((~keep).sum())
                k = int(keep.sum())
                raw[n:n + k] = acts[keep]
                norms[n:n + k] = np.linalg.norm(acts[keep], axis=1)
                tok[n:n + k] = ids[keep]
                pos[n:n + k, 0] = ci[keep]
                pos[n:n + k, 1] = pi[keep]
                n += k
        elapsed = time.perf_counter() - t0
        tps = n_ctx * T / max(elapsed, 1e-9)
        log.info("forward pass: %d contexts x %d tokens in %.1f s (%.0f tokens/s)",
                 n_ctx, T, elapsed, tps)

        # Pass 2: drop massive-activation outliers relative to the median norm.
        norms = norms[:n]
        median = float(np.median(norms)) if n else float("nan")
        if outlier_factor is not None and n:
            threshold = outlier_factor * median
            keep = norms <= threshold
        else:
            threshold = None
            keep = np.ones(n, dtype=bool)
        dropped = np.nonzero(~keep)[0]
        outliers = [
            {"context": int(pos[i, 0]), "position": int(pos[i, 1]), "token_id": int(tok[i]),
             "norm": float(norms[i])}
            for i in dropped[np.argsort(-norms[dropped])]
        ]
        log.info("dropped %d BOS positions and %d outliers (norm > %s x median %.1f)",
                 n_bos, len(dropped), outlier_factor, median)
        kept = np.nonzero(keep)[0]
        n_keep = len(kept)
        if n_keep == 0:
            raise RuntimeError("no positions left after dropping BOS and outliers")

        # Pass 3: write the kept rows as shards; accumulate float64 statistics.
        shards = []
        s1 = np.zeros(d, dtype=np.float64)
        s2 = 0.0
        for si, lo in enumerate(range(0, n_keep, shard_tokens)):
            idx = kept[lo:lo + shard_tokens]
            name = f"acts-{si:05d}.npy"
            arr = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np_dtype,
                                            shape=(len(idx), d))
            for c in range(0, len(idx), 8192):
                block = np.asarray(raw[idx[c:c + 8192]])
                arr[c:c + len(block)] = block.astype(np_dtype)
                b64 = block.astype(np.float64)
                s1 += b64.sum(0)
                s2 += float(np.einsum("ij,ij->", b64, b64))
            arr.flush()
            del arr
            shards.append({"file": name, "n": int(len(idx))})
        del raw
        (tmp / "raw.npy").unlink()
        mean = s1 / n_keep
        mean_sq = s2 / n_keep
        stats = CacheStats(mean=mean, mean_sq_norm=mean_sq,
                           centered_sq_norm=float(mean_sq - mean @ mean),
                           median_norm=float(np.median(norms[kept])))
        np.save(tmp / "token_ids.npy", tok[kept])
        np.save(tmp / "positions.npy", pos[kept])
        np.save(tmp / "contexts.npy", contexts.astype(np.int32))
        header = {
            "format": FORMAT,
            "version": VERSION,
            **(meta or {}),
            "d": d,
            "n_tokens": n_keep,
            "dtype": np.dtype(np_dtype).name,
            "n_contexts": n_ctx,
            "context_length": T,
            "shards": shards,
            "dropped": {
                "bos": n_bos,
                "bos_token_id": bos_token_id,
                "outliers": len(outliers),
                "outlier_factor": outlier_factor,
                "outlier_threshold": threshold,
                "median_norm_before_filter": median,
                "outlier_rows": outliers,
            },
            "stats": stats.to_json(),
            "throughput": {"seconds": elapsed, "tokens_per_second": tps},
        }
        io.write_json(tmp / "header.json", header)
    return ActivationCache.open(out_dir)


def write_subset(cache: ActivationCache, rows: np.ndarray, out_dir: str | Path,
                 shard_tokens: int = 1 << 16) -> ActivationCache:
    """A cache holding ``rows`` (global row indices, kept in increasing order) of ``cache``, with
    its statistics recomputed over them; e.g. the training split less some held-out contexts."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) == 0 or rows[0] < 0 or rows[-1] >= cache.n_tokens:
        raise ValueError(f"rows must be a non-empty subset of 0..{cache.n_tokens - 1}")
    with io.atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shards = []
        s1, s2 = np.zeros(cache.d), 0.0
        norms = np.empty(len(rows), dtype=np.float32)
        for si, lo in enumerate(range(0, len(rows), shard_tokens)):
            block = cache.rows(rows[lo:lo + shard_tokens])
            b64 = block.astype(np.float64)
            s1 += b64.sum(0)
            s2 += float(np.einsum("ij,ij->", b64, b64))
            norms[lo:lo + len(block)] = np.linalg.norm(block, axis=1)
            name = f"acts-{si:05d}.npy"
            np.save(tmp / name, block.astype(cache.dtype))
            shards.append({"file": name, "n": int(len(block))})
        mean, mean_sq = s1 / len(rows), s2 / len(rows)
        stats = CacheStats(mean=mean, mean_sq_norm=mean_sq,
                           centered_sq_norm=float(mean_sq - mean @ mean),
                           median_norm=float(np.median(norms)))
        np.save(tmp / "token_ids.npy", np.asarray(cache.token_ids())[rows])
        np.save(tmp / "positions.npy", np.asarray(cache.positions())[rows])
        np.save(tmp / "contexts.npy", np.asarray(cache.contexts()))
        header = {**cache.header, "n_tokens": int(len(rows)), "shards": shards,
                  "stats": stats.to_json(), "subset_of": str(cache.path)}
        io.write_json(tmp / "header.json", header)
    return ActivationCache.open(out_dir)

