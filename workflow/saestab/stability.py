"""Seed stability of SAE features: reappearance counts, confidence intervals, labels, sweeps.

With N + 1 SAEs of one configuration that differ only in seed, feature ``i`` of anchor SAE ``a``
has ``X_i = #{b != a : max_j cos(d_i^a, d_j^b) >= theta}`` and ``p_hat_i = X_i / N``. Labels:
``stable`` when ``p_hat >= 1 - eps``, ``unstable`` when ``p_hat <= eps``, else ``middle``
(compared with a 1e-9 tolerance so that e.g. 19/20 counts as 0.95). Every SAE may serve as
anchor; the spread of the label fractions across anchors is reported beside their mean.

Everything here works on the (S, S, m) table of best-match cosines from
:func:`saestab.matching.pairwise_max_cosine`; :func:`stability` runs the whole thing from SAEs,
paths or arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import io
from .matching import DEFAULT_MAX_BLOCK_BYTES, pairwise_max_cosine, stack_directions

LABELS = ("stable", "middle", "unstable")
_TOL = 1e-9


# ------------------------------------------------------------------------------------------
# binomial confidence intervals
# ------------------------------------------------------------------------------------------
def _counts(x: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``n`` broadcast together as int64, checked to be whole counts."""
    x, n = np.broadcast_arrays(np.asarray(x), np.asarray(n))
    xi, ni = x.astype(np.int64), n.astype(np.int64)
    if not (np.array_equal(xi, x) and np.array_equal(ni, n)):
        raise ValueError("binomial intervals need whole counts x and n")
    if np.any((xi < 0) | (xi > ni)):
        raise ValueError("binomial intervals need 0 <= x <= n")
    return xi, ni


def wilson_interval(x: Any, n: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``x`` successes in ``n`` trials (arrays broadcast; (0, 1) at
    n = 0), from :func:`scipy.stats.binomtest`.

    binomtest takes one (x, n) at a time, so it is called once per distinct pair: a census has
    only N + 1 of them however many features it counts.
    """
    x, n = _counts(x, n)
    pairs, inverse = np.unique(np.stack([x.ravel(), n.ravel()], axis=1), axis=0,
                               return_inverse=True)
    bounds = np.array([(0.0, 1.0) if m == 0 else tuple(
        stats.binomtest(k, m).proportion_ci(1 - alpha, method="wilson"))
        for k, m in pairs.tolist()], dtype=np.float64).reshape(-1, 2)
    low, high = bounds[inverse.ravel()].T
    return low.reshape(x.shape), high.reshape(x.shape)


def clopper_pearson_interval(x: Any, n: Any, alpha: float = 0.05
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) interval (arrays broadcast; (0, 1) at n = 0).

    Its bounds are beta quantiles, which scipy computes for whole arrays at once;
    ``binomtest(...).proportion_ci(method="exact")`` finds the same bounds by root search, one
    (x, n) at a time.
    """
    x, n = _counts(x, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = stats.beta.ppf(alpha / 2, x, n - x + 1)
        high = stats.beta.ppf(1 - alpha / 2, x + 1, n - x)
    low = np.where(x > 0, low, 0.0)
    high = np.where(x < n, high, 1.0)
    return low, high


_INTERVALS = {"wilson": wilson_interval, "clopper-pearson": clopper_pearson_interval}


def mean_interval(values: Any, alpha: float = 0.05) -> dict[str, float]:
    """Mean of ``values`` (e.g. one number per anchor SAE) with a Student-t interval of the mean,
    the standard deviation, the range and ``n`` (NaNs dropped; interval NaN when n < 2)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "min": nan, "max": nan,
                "n": 0}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half,
            "min": float(v.min()), "max": float(v.max()), "n": n}


# ------------------------------------------------------------------------------------------
# counts and labels
# ------------------------------------------------------------------------------------------
def _check(maxcos: np.ndarray, theta: float, eps: float) -> None:
    if maxcos.ndim != 3 or maxcos.shape[0] != maxcos.shape[1]:
        raise ValueError(f"expected an (S, S, m) max-cosine table, got {maxcos.shape}")
    if maxcos.shape[0] < 2:
        raise ValueError("stability needs at least two SAEs")
    if not -1.0 <= theta <= 1.0:
        raise ValueError(f"theta must lie in [-1, 1], got {theta}")
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must lie in [0, 0.5), got {eps}")


def _others(S: int, a: int) -> np.ndarray:
    return np.array([b for b in range(S) if b != a], dtype=np.int64)


def reappearance_counts(maxcos: np.ndarray, theta: float, anchor: int,
                        others: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``X_i`` for each feature of ``anchor``: how many of ``others`` (default: all other SAEs)
    have a decoder direction with cosine >= ``theta`` to it. int64, shape (m,)."""
    idx = _others(maxcos.shape[0], anchor) if others is None else np.asarray(others)
    if np.any(idx == anchor):
        raise ValueError(f"the anchor {anchor} cannot be one of its own references")
    rows = maxcos[anchor, idx].astype(np.float32)
    return (rows >= np.float32(theta)).sum(axis=0).astype(np.int64)


def _codes(p_hat: np.ndarray, eps: float) -> np.ndarray:
    """Integer labels (0 stable, 1 middle, 2 unstable: indices into :data:`LABELS`)."""
    return np.where(p_hat >= 1 - eps - _TOL, 0, np.where(p_hat <= eps + _TOL, 2, 1))


def label(p_hat: Any, eps: float = 0.05) -> np.ndarray:
    """``"stable"``/``"middle"``/``"unstable"`` for each reappearance rate ``p_hat``."""
    return np.asarray(LABELS)[_codes(np.asarray(p_hat, dtype=np.float64), eps)]


def _label_codes(X: np.ndarray, N: int, eps: float) -> np.ndarray:
    return _codes(X / N, eps)


def _fractions(codes: np.ndarray) -> dict[str, float]:
    counts = np.bincount(codes.ravel(), minlength=3) / codes.size
    return dict(zip(LABELS, counts.tolist(), strict=True))


def _anchors(S: int, anchors: Sequence[int] | None) -> list[int]:
    out = list(range(S)) if anchors is None else [int(a) for a in anchors]
    if not out or any(not 0 <= a < S for a in out):
        raise ValueError(f"anchors must be indices in [0, {S}), got {anchors}")
    return out


def stability_from_maxcos(maxcos: np.ndarray, theta: float = 0.7, eps: float = 0.05,
                          anchors: Sequence[int] | None = None, alpha: float = 0.05,
                          interval: str = "wilson",
                          firing_frequency: np.ndarray | None = None,
                          activation_mass: np.ndarray | None = None) -> pd.DataFrame:
    """Per-(anchor, feature) stability table from an (S, S, m) max-cosine table.

    Columns: ``anchor, feature, X, N, p_hat, ci_low, ci_high, label, max_cos_median`` (the
    median over the N other seeds of the feature's best-match cosine), plus ``firing_frequency``
    and ``activation_mass`` when given as (S, m) arrays. ``interval`` is ``"wilson"`` or
    ``"clopper-pearson"`` at level ``1 - alpha``; ``label`` is a categorical over
    :data:`LABELS`.
    """
    maxcos = np.asarray(maxcos)
    _check(maxcos, theta, eps)
    if interval not in _INTERVALS:
        raise ValueError(f"interval must be one of {sorted(_INTERVALS)}, got {interval!r}")
    S, _, m = maxcos.shape
    N = S - 1
    extra = {"firing_frequency": firing_frequency, "activation_mass": activation_mass}
    for name, arr in extra.items():
        if arr is not None and np.shape(arr) != (S, m):
            raise ValueError(f"{name} must have shape (S, m) = {(S, m)}, got {np.shape(arr)}")
    parts = []
    for a in _anchors(S, anchors):
        rows = maxcos[a, _others(S, a)].astype(np.float32)
        X = (rows >= np.float32(theta)).sum(axis=0).astype(np.int64)
        part = {"anchor": np.full(m, a, dtype=np.int32), "feature": np.arange(m, dtype=np.int32),
                "X": X, "N": np.full(m, N, dtype=np.int64), "p_hat": X / N,
                "max_cos_median": np.median(rows, axis=0).astype(np.float32)}
        for name, arr in extra.items():
            if arr is not None:
                part[name] = np.asarray(arr)[a]
        parts.append(pd.DataFrame(part))
    df = pd.concat(parts, ignore_index=True)
    X = df["X"].to_numpy()
    low, high = _INTERVALS[interval](np.arange(N + 1), N, alpha)  # X takes only N + 1 values
    codes = _label_codes(X, N, eps)
    df.insert(5, "ci_low", low[X])
    df.insert(6, "ci_high", high[X])
    df.insert(7, "label", pd.Categorical.from_codes(codes, categories=list(LABELS)))
    return df


def label_fractions(df: pd.DataFrame) -> pd.DataFrame:
    """Per anchor: ``anchor, n_features, stable, middle, unstable`` (fractions of features)."""
    codes = pd.Categorical(df["label"], categories=list(LABELS)).codes
    if (codes < 0).any():
        raise ValueError(f"labels must be among {LABELS}")
    rows = []
    for anchor, idx in sorted(df.groupby("anchor").indices.items()):
        rows.append({"anchor": anchor, "n_features": len(idx), **_fractions(codes[idx])})
    return pd.DataFrame(rows)


def anchor_spread(fractions: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Spread of the label fractions across anchors: one row per label (and per ``by`` group)
    with ``n_anchors, mean, std`` (ddof=1; NaN with one anchor), ``min, max``."""
    long = fractions.melt(id_vars=["anchor", *by], value_vars=list(LABELS), var_name="label",
                          value_name="fraction")
    keys = [*by, "label"]
    out = long.groupby(keys, sort=False)["fraction"].agg(
        n_anchors="count", mean="mean", std="std", min="min", max="max").reset_index()
    return out


# ------------------------------------------------------------------------------------------
# sweeps
# ------------------------------------------------------------------------------------------
def _sweep(maxcos: np.ndarray, thetas: Sequence[float], epss: Sequence[float],
           anchors: Sequence[int] | None) -> pd.DataFrame:
    maxcos = np.asarray(maxcos)
    for theta in thetas:
        for eps in epss:
            _check(maxcos, theta, eps)
    S = maxcos.shape[0]
    rows = []
    for a in _anchors(S, anchors):
        block = maxcos[a, _others(S, a)].astype(np.float32)
        for theta in thetas:
            for eps in epss:
                X = (block >= np.float32(theta)).sum(axis=0)
                rows.append({"theta": float(theta), "eps": float(eps), "anchor": a,
                             **_fractions(_label_codes(X, S - 1, eps))})
    return pd.DataFrame(rows)


def theta_sweep(maxcos: np.ndarray, thetas: Sequence[float], eps: float = 0.05,
                anchors: Sequence[int] | None = None) -> pd.DataFrame:
    """Label fractions per (theta, anchor): ``theta, eps, anchor, stable, middle, unstable``."""
    return _sweep(maxcos, thetas, [eps], anchors)


def eps_sweep(maxcos: np.ndarray, epss: Sequence[float], theta: float = 0.7,
              anchors: Sequence[int] | None = None) -> pd.DataFrame:
    """Label fractions per (eps, anchor): ``theta, eps, anchor, stable, middle, unstable``."""
    return _sweep(maxcos, [theta], epss, anchors)


def n_subsample(maxcos: np.ndarray, ns: Sequence[int], theta: float = 0.7, eps: float = 0.05,
                draws: int = 10, rng: np.random.Generator | None = None,
                anchors: Sequence[int] | None = None) -> pd.DataFrame:
    """How labels change with fewer seeds.

    For each anchor, each ``n`` in ``ns`` (1 <= n <= N) and each of ``draws`` draws, pick ``n`` of
    the anchor's N other seeds at random (without replacement, from ``rng``), relabel with
    ``p_hat = X / n`` on that subset and compare with the labels from all N. Columns:
    ``n, draw, anchor, agreement`` (fraction of features with the same label),
    ``stable_kept``/``unstable_kept`` (fraction of the full-N stable/unstable features that keep
    their label; NaN when there are none) and the subset's ``stable, middle, unstable`` fractions.
    """
    maxcos = np.asarray(maxcos)
    _check(maxcos, theta, eps)
    if rng is None:
        raise ValueError("n_subsample needs an explicit numpy Generator (rng)")
    S = maxcos.shape[0]
    N = S - 1
    bad = [n for n in ns if not 1 <= n <= N]
    if bad:
        raise ValueError(f"subsample sizes must lie in [1, N={N}], got {bad}")
    rows = []
    for a in _anchors(S, anchors):
        others = _others(S, a)
        hits = maxcos[a, others].astype(np.float32) >= np.float32(theta)  # (N, m)
        full = _label_codes(hits.sum(axis=0), N, eps)
        n_stable, n_unstable = (full == 0).sum(), (full == 2).sum()
        for n in ns:
            for draw in range(draws):
                pick = rng.choice(N, size=int(n), replace=False)
                sub = _label_codes(hits[pick].sum(axis=0), int(n), eps)
                same = sub == full
                rows.append({
                    "n": int(n), "draw": draw, "anchor": a, "agreement": float(same.mean()),
                    "stable_kept": float(same[full == 0].sum() / n_stable) if n_stable
                    else float("nan"),
                    "unstable_kept": float(same[full == 2].sum() / n_unstable) if n_unstable
                    else float("nan"),
                    **_fractions(sub)})
    return pd.DataFrame(rows)


def ecdf(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: sorted finite ``x`` and ``F(x) = rank / n`` (both float64)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x)])
    return x, np.arange(1, x.size + 1, dtype=np.float64) / max(x.size, 1)


# ------------------------------------------------------------------------------------------
# library entry point and storage
# ------------------------------------------------------------------------------------------
@dataclass
class StabilityResult:
    """What :func:`stability` computed."""

    table: pd.DataFrame  # one row per (anchor, feature), see stability_from_maxcos
    fractions: pd.DataFrame  # per anchor, see label_fractions
    spread: pd.DataFrame  # across anchors, see anchor_spread
    maxcos: np.ndarray  # (S, S, m) float16
    argmax: np.ndarray  # (S, S, m) int32
    theta: float
    eps: float


def _directions(item: Any, device: Any) -> Any:
    """Decoder directions of an SAE object, a path to a saved SAE, or an (m, d) array."""
    if hasattr(item, "decoder_directions"):
        return item.decoder_directions()
    if isinstance(item, str | os.PathLike):
        from .sae import load_sae  # lazily: only needed for paths

        return load_sae(item, device=device).decoder_directions()
    return item


def stability(saes_or_dirs: Sequence[Any], theta: float = 0.7, eps: float = 0.05,
              chunk_size: int = 4096, device: Any = "cpu",
              max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
              anchors: Sequence[int] | None = None, alpha: float = 0.05,
              interval: str = "wilson") -> StabilityResult:
    """Seed stability of the features of S SAEs of one configuration.

    ``saes_or_dirs`` holds SAE objects (anything with ``decoder_directions()``), paths to saved
    SAEs (read with :func:`saestab.sae.load_sae`) or (m, d) arrays/tensors of decoder rows, all
    with the same shape; they are loaded and stacked one at a time. Matching runs on ``device``
    (see :func:`saestab.matching.pairwise_max_cosine` for ``chunk_size`` and
    ``max_block_bytes``).
    """
    if len(saes_or_dirs) < 2:
        raise ValueError("stability needs at least two SAEs")
    stacked = stack_directions(saes_or_dirs, device, loader=lambda x: _directions(x, device))
    maxcos, argmax = pairwise_max_cosine(stacked, chunk_size=chunk_size, device=device,
                                         max_block_bytes=max_block_bytes)
    table = stability_from_maxcos(maxcos, theta, eps, anchors=anchors, alpha=alpha,
                                  interval=interval)
    fractions = label_fractions(table)
    return StabilityResult(table=table, fractions=fractions, spread=anchor_spread(fractions),
                           maxcos=maxcos, argmax=argmax, theta=theta, eps=eps)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` as Parquet (pyarrow) atomically."""
    with io.atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


def read_table(path: str | os.PathLike, what: str = "stability table (Parquet)") -> pd.DataFrame:
    """Read a Parquet table, raising :class:`saestab.io.InputError` naming the file and what to
    do about it."""
    if not os.path.isfile(path):
        raise io.InputError(f"{path}: expected a {what}, but the file does not exist. "
                            f"{io.REBUILD}")
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise io.unreadable(path, what, err) from err
