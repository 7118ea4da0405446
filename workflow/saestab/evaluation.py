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
"""

from __future__ import annotations

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


@torch.no_grad()
def evaluate_sae(sae: SAE, cache: ActivationCache | str | Path, batch_size: int = 4096,
                 device: str | torch.device = "cpu", dense_threshold: float = 0.1,
                 max_tokens: int | None = None) -> dict[str, Any]:
    """Reconstruction and sparsity statistics of ``sae`` on ``cache`` (first ``max_tokens`` rows).

    Returns a dict of summary scalars plus ``"frequency"``, ``"mass"`` and ``"energy"`` (numpy
    arrays of length d_sae). The SAE is moved to ``device`` (in place, as ``Module.to`` does).
    """
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    if cache.d != sae.cfg.d_in:
        raise io.InputError(f"{cache.path}: activations have d={cache.d}, the SAE expects "
                            f"d_in={sae.cfg.d_in}")
    device = torch.device(device)
    sae = sae.to(device).eval()
    n = cache.n_tokens if max_tokens is None else min(max_tokens, cache.n_tokens)
    if n <= 0:
        raise io.InputError(f"{cache.path}: no tokens to evaluate")
    m, d = sae.cfg.d_sae, sae.cfg.d_in
    dec_norm = sae.W_dec.detach().double().norm(dim=1)
    sse = torch.zeros((), dtype=torch.float64, device=device)
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(m, dtype=torch.int64, device=device)
    f_sum = torch.zeros(m, dtype=torch.float64, device=device)
    f_sq = torch.zeros(m, dtype=torch.float64, device=device)
    starts = range(0, n, batch_size)
    for start in progress(starts, total=len(starts), desc="evaluate", unit="batch"):
        x = torch.from_numpy(cache.load(start, min(start + batch_size, n))).to(device)
        # The code as CSR: decoding and the per-feature sums touch the active entries only.
        # Sums in float64: with the reconstruction error in float32, the census summaries of a
        # SLURM run and a local run differed beyond 1e-12 (tests/slurm).
        code = sae.encode_sparse(x)
        x64 = x.double()
        sse += (x64 - sae.decode(code).double()).pow_(2).sum()
        s1 += x64.sum(0)
        s2 += x64.pow(2).sum()
        col, val = code.col_indices(), code.values().double()
        counts += torch.bincount(col[val > 0], minlength=m)
        f_sum += torch.bincount(col, weights=val, minlength=m)
        f_sq += torch.bincount(col, weights=val * val, minlength=m)
    mass = f_sum * dec_norm
    energy = f_sq * dec_norm.pow(2)
    l0 = counts.sum().double()
    centered = float(s2 - s1.pow(2).sum() / n)
    freq = (counts.double() / n).cpu().numpy()
    out: dict[str, Any] = {
        "n_tokens": n,
        "ev": 1.0 - float(sse) / centered if centered > 0 else float("nan"),
        "mse": float(sse) / n,
        "l0": float(l0) / n,
        "dead_fraction": float((counts == 0).double().mean()),
        "dense_fraction": float((torch.from_numpy(freq) > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold,
        "frequency": freq,
        "mass": mass.cpu().numpy(),
        "energy": energy.cpu().numpy(),
    }
    log.info("EV %.4f  MSE %.4g  L0 %.1f  dead %.3f  dense %.3f on %d tokens", out["ev"],
             out["mse"], out["l0"], out["dead_fraction"], out["dense_fraction"], n)
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
