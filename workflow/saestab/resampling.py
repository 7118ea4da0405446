"""Seed-level uncertainty: intervals from resampling SAEs, the study's independent unit.

Features of one SAE are not independent, and neither are anchors matched against the same other
seeds, so an interval over features or anchors understates the uncertainty. Here every interval
comes from the leave-one-seed-out jackknife: the statistic is recomputed end to end on each subset
of the seeds that leaves one out, and the spread of those recomputations gives the standard error
(Efron & Stein 1981; Quenouille's estimator). A difference between two configurations trained
independently adds the two jackknife variances (Welch–Satterthwaite degrees of freedom).

Every function returns an :data:`Interval` dict: ``mean`` (the statistic on all seeds), ``se``,
``ci_low``, ``ci_high``, ``n`` (seeds), ``dof`` and ``replicates`` (the leave-one-out values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from scipy import stats

T = TypeVar("T")
Interval = dict[str, Any]


def _interval(mean: float, se: float, dof: float, alpha: float, n: int,
              replicates: Sequence[float] | None = None) -> Interval:
    if not np.isfinite(se) or dof <= 0:
        lo = hi = float("nan")
    else:
        half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
        lo, hi = mean - half, mean + half
    out: Interval = {"mean": float(mean), "se": float(se), "ci_low": float(lo),
                     "ci_high": float(hi), "n": int(n), "dof": float(dof)}
    if replicates is not None:
        out["replicates"] = [float(r) for r in replicates]
    return out


def jackknife(units: Sequence[T], statistic: Callable[[Sequence[T]], float],
              alpha: float = 0.05) -> Interval:
    """Leave-one-out jackknife of ``statistic`` over ``units`` (e.g. seed indices).

    ``statistic`` is called once on all units and once on each subset that leaves one unit out;
    the interval is ``mean ± t_{n-1} · se`` with the jackknife standard error
    ``se² = (n-1)/n · Σ (θ_(i) − θ_(·))²``. NaN interval with fewer than three units (a
    leave-one-out subset of one seed has no pairs to compare).
    """
    units = list(units)
    n = len(units)
    full = float(statistic(units))
    if n < 3:
        return _interval(full, float("nan"), 0, alpha, n)
    reps = np.array([statistic(units[:i] + units[i + 1:]) for i in range(n)], dtype=np.float64)
    if not np.all(np.isfinite(reps)):
        return _interval(full, float("nan"), 0, alpha, n, reps)
    se = float(np.sqrt((n - 1) / n * np.sum((reps - reps.mean()) ** 2)))
    return _interval(full, se, n - 1, alpha, n, reps)


def difference(a: Interval, b: Interval, alpha: float = 0.05) -> Interval:
    """``a − b`` for statistics of two independently trained sets of seeds: the variances add,
    with Welch–Satterthwaite degrees of freedom."""
    va, vb = a["se"] ** 2, b["se"] ** 2
    se = float(np.sqrt(va + vb))
    terms = [v ** 2 / d for v, d in ((va, a["dof"]), (vb, b["dof"])) if v > 0 and d > 0]
    dof = (va + vb) ** 2 / sum(terms) if terms else min(a["dof"], b["dof"])
    return _interval(a["mean"] - b["mean"], se, dof, alpha, min(a["n"], b["n"]))


def ratio_of_means(num: np.ndarray, den: np.ndarray, alpha: float = 0.05) -> Interval:
    """``mean(num) / mean(den)`` over paired per-seed values (e.g. ΔEV of the stable and of the
    matched unstable set, one pair per anchor SAE), jackknifed over the seeds."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"expected two 1-d arrays of equal length, got {num.shape}, {den.shape}")

    def stat(idx: Sequence[int]) -> float:
        d = den[list(idx)].mean()
        return float(num[list(idx)].mean() / d) if d != 0 else float("nan")

    return jackknife(range(len(num)), stat, alpha)


def mean_of(values: np.ndarray, alpha: float = 0.05) -> Interval:
    """The mean of one value per seed, jackknifed (for a mean this is the Student-t interval)."""
    v = np.asarray(values, dtype=np.float64)
    return jackknife(range(len(v)), lambda idx: float(v[list(idx)].mean()), alpha)


def shifted(interval: Interval, by: float) -> Interval:
    """``interval`` with ``by`` added to the statistic and both bounds (e.g. a ratio − 1)."""
    out = dict(interval)
    for k in ("mean", "ci_low", "ci_high"):
        out[k] = interval[k] + by
    out.pop("replicates", None)
    return out
