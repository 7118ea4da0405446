"""Evaluate an SAE on a held-out activation cache.

Summary scalars (all accumulated in float64 over the evaluated tokens):

``ev``              explained variance ``1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - x_bar||^2``,
                    ``x_bar`` the per-dimension mean over the evaluated tokens
``mse``             mean over tokens of ``||x - x_hat||^2`` (summed over dimensions)
``l0``              mean number of active features per token
``dead_fraction``   fraction of features that never fire on the evaluated tokens
``dense_fraction``  fraction of features firing on more than ``dense_threshold`` of the tokens

Per-feature arrays: ``frequency`` ``P(f_j > 0)``, ``mass`` ``sum_t f_j(x_t) * ||d_j||`` and
``energy`` ``sum_t f_j(x_t)^2 * ||d_j||^2`` (the squared norm of the feature's reconstruction
contribution: what zeroing it removes from the reconstruction).

All of it comes from one pass, :func:`scan_sae`, which can also keep the rows of each feature's
strongest activations (the surface statistics' input): a :class:`FeatureScan`, saved for all seeds
of a configuration by :func:`write_scans` so that the census and the surface statistics share
one pass over the train split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import io
from .activations import ActivationCache
from .logs import get_logger, progress
from .sae import SAE

log = get_logger("evaluation")

SCALARS_FILE = "eval.json"
FEATURES_FILE = "eval_features.parquet"


@dataclass
class FeatureScan:
    """One pass of an SAE over (the first ``n_tokens`` rows of) a cache."""

    n_tokens: int
    sse: float  # sum over tokens of ||x - x_hat||^2
    centered: float  # sum over tokens of ||x - x_bar||^2
    count: np.ndarray  # (m,) int64: tokens where the feature fires
    total: np.ndarray  # (m,) float64: sum of its activations
    total_sq: np.ndarray  # (m,) float64: sum of their squares
    max: np.ndarray  # (m,) float32
    dec_norm: np.ndarray  # (m,) float64: ||d_j||
    top_values: np.ndarray  # (K, m) float32 descending; 0 where it fired fewer than K times
    top_rows: np.ndarray  # (K, m) int64: their cache rows (ties: lower row first); 0 if none

    @property
    def mass(self) -> np.ndarray:
        return self.total * self.dec_norm

    @property
    def energy(self) -> np.ndarray:
        return self.total_sq * self.dec_norm**2

    def evaluation(self, dense_threshold: float = 0.1) -> dict[str, Any]:
        """The summary scalars and per-feature arrays of :func:`evaluate_sae`."""
        n = self.n_tokens
        freq = self.count / n
        return {
            "n_tokens": n,
            "ev": 1.0 - self.sse / self.centered if self.centered > 0 else float("nan"),
            "mse": self.sse / n,
            "l0": float(self.count.sum()) / n,
            "dead_fraction": float(np.mean(self.count == 0)),
            "dense_fraction": float(np.mean(freq > dense_threshold)),
            "dense_threshold": dense_threshold,
            "frequency": freq,
            "mass": self.mass,
            "energy": self.energy,
        }


def scan_sae(sae: SAE, cache: ActivationCache | str | Path, *, top_k: int = 0,
             batch_size: int = 4096, device: str | torch.device = "cpu",
             max_tokens: int | None = None) -> FeatureScan:
    """One pass of ``sae`` over ``cache`` (first ``max_tokens`` rows): the reconstruction error,
    per-feature sums and maxima and, with ``top_k``, the rows of each feature's ``top_k``
    largest activations. The SAE is moved to ``device`` (in place, as ``Module.to`` does)."""
    return scan_saes({0: sae}, cache, top_k=top_k, batch_size=batch_size, device=device,
                     max_tokens=max_tokens)[0]


@torch.no_grad()
def scan_saes(saes: Mapping[int, SAE], cache: ActivationCache | str | Path, *, top_k: int = 0,
              batch_size: int = 4096, device: str | torch.device = "cpu",
              max_tokens: int | None = None) -> dict[int, FeatureScan]:
    """:func:`scan_sae` of every SAE of ``saes`` (by seed) in one pass over ``cache``: each batch
    is read, and its float64 sums taken, once for all of them. Each seed's scan is the one
    :func:`scan_sae` gives it alone."""
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    if not saes:
        raise ValueError("scan_saes needs at least one SAE")
    for sae in saes.values():
        if cache.d != sae.cfg.d_in:
            raise io.InputError(f"{cache.path}: activations have d={cache.d}, the SAE expects "
                                f"d_in={sae.cfg.d_in}")
    device = torch.device(device)
    saes = {seed: sae.to(device).eval() for seed, sae in saes.items()}
    n = cache.n_tokens if max_tokens is None else min(max_tokens, cache.n_tokens)
    if n <= 0:
        raise io.InputError(f"{cache.path}: no tokens to evaluate")
    s1 = torch.zeros(cache.d, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    k = min(top_k, n)
    acc = {seed: _ScanSums(sae.cfg.d_sae, k, device) for seed, sae in saes.items()}
    starts = range(0, n, batch_size)
    for start in progress(starts, total=len(starts), desc="scan", unit="batch"):
        x = torch.from_numpy(cache.load(start, min(start + batch_size, n))).to(device)
        # Sums in float64: with the reconstruction error in float32, the census summaries of a
        # SLURM run and a local run differed beyond 1e-12 (tests/slurm).
        x64 = x.double()
        s1 += x64.sum(0)
        s2 += x64.pow(2).sum()
        for seed, sae in saes.items():
            acc[seed].add(sae, x, x64, start)
    centered = float(s2 - s1.pow(2).sum() / n)
    return {seed: acc[seed].result(sae, n, centered) for seed, sae in saes.items()}


class _ScanSums:
    """What :func:`scan_saes` accumulates for one SAE."""

    def __init__(self, m: int, k: int, device: torch.device):
        self.sse = torch.zeros((), dtype=torch.float64, device=device)
        self.count = np.zeros(m, dtype=np.int64)
        self.total = np.zeros(m, dtype=np.float64)
        self.total_sq = np.zeros(m, dtype=np.float64)
        self.vmax = np.zeros(m, dtype=np.float32)
        self.top = _TopRows(m, k)

    def add(self, sae: SAE, x: torch.Tensor, x64: torch.Tensor, start: int) -> None:
        # The code as CSR: decoding and the per-feature sums touch the active entries only.
        code = sae.encode_sparse(x)
        self.sse += (x64 - sae.decode(code).double()).pow_(2).sum()
        crow = code.crow_indices().cpu().numpy()
        col = code.col_indices().cpu().numpy()
        val = code.values().float().cpu().numpy()
        on = val > 0  # the CSR code may hold explicit zeros
        row = np.repeat(np.arange(len(crow) - 1), np.diff(crow))[on] + start
        col, val = col[on], val[on]
        m = len(self.count)
        self.count += np.bincount(col, minlength=m)
        self.total += np.bincount(col, weights=val, minlength=m)
        self.total_sq += np.bincount(col, weights=np.square(val, dtype=np.float64), minlength=m)
        np.maximum.at(self.vmax, col, val)
        if self.top.k:
            self.top.add(row, col, val)

    def result(self, sae: SAE, n: int, centered: float) -> FeatureScan:
        return FeatureScan(
            n_tokens=n, sse=float(self.sse), centered=centered, count=self.count,
            total=self.total, total_sq=self.total_sq, max=self.vmax,
            dec_norm=sae.W_dec.detach().double().norm(dim=1).cpu().numpy(),
            top_values=np.ascontiguousarray(self.top.values.T),
            top_rows=np.ascontiguousarray(self.top.rows.T))


class _TopRows:
    """The running ``k`` largest activations of each of ``m`` features and their rows, by
    decreasing value and then increasing row (feature-major)."""

    def __init__(self, m: int, k: int):
        self.m, self.k = m, k
        self.values = np.zeros((m, k), dtype=np.float32)
        self.rows = np.zeros((m, k), dtype=np.int64)

    def add(self, row: np.ndarray, col: np.ndarray, val: np.ndarray) -> None:
        """Merge a batch's active entries (rows increasing across calls)."""
        m, k = self.m, self.k
        # Only an entry above its feature's present k-th value can enter: one equal to it comes
        # from a later row, so it ranks after it. Once the running top-k fill up, this drops
        # nearly all of a batch before the sort.
        enter = val > self.values[col, k - 1]
        if not enter.any():
            return
        col, val, row = col[enter], val[enter], row[enter]
        # the batch's top-k of each feature: entries by feature, then value, then row
        order = np.lexsort((row, -val, col))
        col, val, row = col[order], val[order], row[order]
        first = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=m))[:-1]])
        rank = np.arange(len(col)) - first[col]
        keep = rank < k
        # merge only the features that have candidates
        feats = np.unique(col)
        slot = np.zeros(m, dtype=np.int64)
        slot[feats] = np.arange(len(feats))
        batch_v = np.zeros((len(feats), k), dtype=np.float32)
        batch_r = np.zeros((len(feats), k), dtype=np.int64)
        batch_v[slot[col[keep]], rank[keep]] = val[keep]
        batch_r[slot[col[keep]], rank[keep]] = row[keep]
        # the running top-k holds earlier rows, so a stable sort keeps ties row-ordered
        cand_v = np.concatenate([self.values[feats], batch_v], axis=1)
        cand_r = np.concatenate([self.rows[feats], batch_r], axis=1)
        pick = np.argsort(-cand_v, axis=1, kind="stable")[:, :k]
        self.values[feats] = np.take_along_axis(cand_v, pick, axis=1)
        self.rows[feats] = np.take_along_axis(cand_r, pick, axis=1)


def evaluate_sae(sae: SAE, cache: ActivationCache | str | Path, batch_size: int = 4096,
                 device: str | torch.device = "cpu", dense_threshold: float = 0.1,
                 max_tokens: int | None = None) -> dict[str, Any]:
    """Reconstruction and sparsity statistics of ``sae`` on ``cache`` (first ``max_tokens`` rows).

    Returns a dict of summary scalars plus ``"frequency"``, ``"mass"`` and ``"energy"`` (numpy
    arrays of length d_sae). The SAE is moved to ``device`` (in place, as ``Module.to`` does).
    """
    out = scan_sae(sae, cache, batch_size=batch_size, device=device,
                   max_tokens=max_tokens).evaluation(dense_threshold)
    log.info("EV %.4f  MSE %.4g  L0 %.1f  dead %.3f  dense %.3f on %d tokens", out["ev"],
             out["mse"], out["l0"], out["dead_fraction"], out["dense_fraction"],
             out["n_tokens"])
    return out


def write_scans(scans: Mapping[int, FeatureScan], path: str | Path) -> Path:
    """Save the scans of several seeds (``{seed: scan}``, one shape) to one ``.npz``
    atomically."""
    seeds = sorted(scans)
    arrays = {"seeds": np.asarray(seeds, dtype=np.int64)}
    for f in fields(FeatureScan):
        arrays[f.name] = np.stack([np.asarray(getattr(scans[s], f.name)) for s in seeds])
    path = Path(path)
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)
    return path


def read_scans(path: str | Path) -> dict[int, FeatureScan]:
    """What :func:`write_scans` saved, as ``{seed: scan}``."""
    path = Path(path)
    if not path.is_file():
        raise io.InputError(f"{path}: expected the feature scans of a configuration "
                            "(rule scan_features)")
    with np.load(path) as z:
        missing = [f.name for f in fields(FeatureScan) if f.name not in z] + (
            [] if "seeds" in z else ["seeds"])
        if missing:
            raise io.InputError(f"{path}: not a feature-scan file (missing {missing}); "
                                "rerun rule scan_features")
        data = {k: z[k] for k in z.files}
    out = {}
    for i, s in enumerate(data["seeds"].tolist()):
        kw = {f.name: data[f.name][i] for f in fields(FeatureScan)}
        kw.update(n_tokens=int(kw["n_tokens"]), sse=float(kw["sse"]),
                  centered=float(kw["centered"]))
        out[int(s)] = FeatureScan(**kw)
    return out


def summary_scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able scalars of an :func:`evaluate_sae` result (arrays left out)."""
    return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}


def write_evaluation(result: dict[str, Any], out_dir: str | Path,
                     extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``eval.json`` (scalars + ``extra``) and ``eval_features.parquet`` (feature,
    frequency, mass) into ``out_dir`` (e.g. beside the SAE weights), each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars = {**summary_scalars(result), **(extra or {})}
    json_path = out_dir / SCALARS_FILE
    io.write_json(json_path, scalars)
    table = pa.table({
        "feature": np.arange(len(result["frequency"]), dtype=np.int32),
        "frequency": np.asarray(result["frequency"], dtype=np.float64),
        "mass": np.asarray(result["mass"], dtype=np.float64),
    })
    pq_path = out_dir / FEATURES_FILE
    with io.atomic_path(pq_path) as tmp:
        pq.write_table(table, tmp)
    return json_path, pq_path


def read_evaluation(out_dir: str | Path) -> dict[str, Any]:
    """Read back what :func:`write_evaluation` wrote (scalars plus the per-feature arrays)."""
    out_dir = Path(out_dir)
    scalars = io.read_json(out_dir / SCALARS_FILE, what="SAE evaluation summary")
    path = out_dir / FEATURES_FILE
    if not path.is_file():
        raise io.InputError(f"{path}: expected the per-feature evaluation table")
    table = pq.read_table(path)
    return {**scalars, "frequency": table["frequency"].to_numpy(),
            "mass": table["mass"].to_numpy()}
