"""Geometry of unstable features: the subspaces they span and whether those are reproducible.

For one SAE configuration (several seeds) and its census labels (each seed as anchor):

* **spectra**: singular values of each seed's unit decoder directions of the unstable set,
  beside the stable set and random unit vectors of the same count; the energy-threshold rank
  ``r`` (smallest ``r`` whose top singular values hold ``energy`` of the squared norm), the
  participation ratio ``(sum s^2)^2 / sum s^4`` and the entropy effective rank
  ``exp(H(s^2 / sum s^2))`` (Roy & Vetterli 2007), also on subsamples of each set (rank vs
  count).
* **transfer**: for an ordered pair of seeds (a, b) each seed's unstable features are split in
  random halves H1/H2. With ``r`` the energy rank of a's H1, the share of the squared norm of b's
  H2 directions captured by: a's H1 subspace (cross-seed), b's own H1 subspace (within-seed,
  held-out), a random r-dim subspace (r/d, and one drawn), a **covariance-matched** random
  subspace (the span of r draws from N(0, Σ) of the eval activations: the baseline a learned
  subspace must beat, since any set of directions fitted to anisotropic data beats an isotropic
  one), the top-r PCA subspace of the eval activations, the top-r subspace of a's stable
  features; the same for the reconstruction contribution ``sum_{j in H2_b} f_j(x) d_j`` of b's
  held-out unstable features on the eval set (activation-level), and cross-seed with full sets.
* **angles**: principal angles between seeds' full unstable subspaces (rank
  ``min(r_a, r_b)``) beside those between two random subspaces of the same dimension.

Pairs sharing a seed are not independent, so intervals of pair means resample seeds: the ``c5``
block of the summary, which the verdict reads, uses the leave-one-seed-out jackknife (a seed
never counts against its own copy); the other summary entries keep percentile bootstraps over
seeds (resampled with replacement, pairs of distinct resampled seeds averaged) for the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from scipy import stats

from . import io, resampling
from .activations import ActivationCache
from .census import seed_dirs
from .logs import get_logger, progress
from .sae import load_sae

log = get_logger("subspaces")

SETS = ("unstable", "stable", "random")
TRANSFER_KINDS = ("cross", "within", "random", "random_drawn", "pca", "stable")
"""Subspaces whose capture of seed b's held-out unstable directions is measured."""


# ------------------------------------------------------------------------------------------
# linear algebra
# ------------------------------------------------------------------------------------------
def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _gram_eig(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Squared singular values (descending) of ``x`` (n, d) from the smaller of its two Gram
    matrices, with the right singular vectors (d, k) when the (d, d) Gram was used, else None
    (then the left ones (n, k) come third). Much faster than an SVD for tall or wide ``x``."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    w, v = np.linalg.eigh(x.T @ x if d <= n else x @ x.T)
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    return (w, v, v) if d <= n else (w, None, v)


def energy_spectrum(x: np.ndarray) -> np.ndarray:
    """Squared singular values of ``x`` (n, d) as fractions of their sum, descending
    (``min(n, d)`` values)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0)
    s2 = _gram_eig(x)[0][:min(x.shape)]
    total = s2.sum()
    return s2 / total if total > 0 else s2


def energy_rank(x_or_spectrum: np.ndarray, energy: float = 0.9) -> int:
    """Smallest ``r`` whose top-r singular values hold at least ``energy`` of the squared norm.

    Takes a matrix (n, d) or an energy spectrum (1-D, as from :func:`energy_spectrum`).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = x_or_spectrum if np.ndim(x_or_spectrum) == 1 else energy_spectrum(x_or_spectrum)
    if len(e) == 0 or e.sum() == 0:
        return 0
    c = np.cumsum(e) / e.sum()
    return int(min(np.searchsorted(c, energy - 1e-12) + 1, len(e)))


def participation_ratio(spectrum: np.ndarray) -> float:
    """``(sum e)^2 / sum e^2`` of an energy spectrum: 1 for one direction, n for n equal ones."""
    e = np.asarray(spectrum, dtype=np.float64)
    return float(e.sum() ** 2 / (e**2).sum()) if (e**2).sum() > 0 else 0.0


def entropy_rank(spectrum: np.ndarray) -> float:
    """``exp`` of the Shannon entropy of the normalised energy spectrum."""
    e = np.asarray(spectrum, dtype=np.float64)
    if e.sum() <= 0:
        return 0.0
    p = e[e > 0] / e.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def right_vectors(x: np.ndarray) -> np.ndarray:
    """All right singular vectors of ``x`` (n, d) with non-zero singular value, by decreasing
    singular value, as orthonormal columns (d, rank); ``[:, :r]`` is the top-r subspace."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros((x.shape[1], 0))
    w, right, left = _gram_eig(x)
    keep = int((w > w[0] * 1e-10).sum()) if w[0] > 0 else 0
    if right is not None:
        return right[:, :keep]
    return x.T @ left[:, :keep] / np.sqrt(w[:keep])  # v_i = x^T u_i / s_i


def top_basis(x: np.ndarray, r: int) -> np.ndarray:
    """Orthonormal basis (d, min(r, rank)) of the top-r right singular vectors of ``x`` (n, d)."""
    return right_vectors(x)[:, :max(r, 0)]


def random_basis(d: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random r-dimensional subspace of R^d (orthonormal basis, d x r)."""
    q, rr = np.linalg.qr(rng.standard_normal((d, r)))
    return q * np.sign(np.diag(rr))


def captured(basis: np.ndarray, x: np.ndarray) -> float:
    """Share of the squared norm of the rows of ``x`` inside span(``basis``):
    ``sum ||B^T x_i||^2 / sum ||x_i||^2`` (for unit rows, the mean captured fraction)."""
    x = np.asarray(x, dtype=np.float64)
    total = float((x**2).sum())
    if total == 0:
        return float("nan")
    return float(((x @ basis) ** 2).sum() / total) if basis.shape[1] else 0.0


def captured_gram(basis: np.ndarray, gram: np.ndarray) -> float:
    """:func:`captured` from the Gram matrix ``G = X^T X`` (d, d): ``tr(B^T G B) / tr(G)``."""
    tr = float(np.trace(gram))
    if tr == 0:
        return float("nan")
    return float(((gram @ basis) * basis).sum() / tr) if basis.shape[1] else 0.0


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of ``a`` and ``b``
    (``min`` of their ranks many), by :func:`scipy.linalg.subspace_angles` (accurate for small
    angles, where the arccos of singular values is not)."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros(0)
    return np.sort(scipy.linalg.subspace_angles(a, b))


def pca_basis(acts: np.ndarray) -> np.ndarray:
    """All principal axes of ``acts`` (n, d), by decreasing variance, as columns (d, d)."""
    x = np.asarray(acts, dtype=np.float64)
    x = x - x.mean(axis=0)
    w, v = np.linalg.eigh(x.T @ x)
    return v[:, np.argsort(w)[::-1]]


def covariance_basis(cov_sqrt: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal basis (d, r) of the span of ``r`` draws from N(0, Σ), ``cov_sqrt`` a square
    root of Σ (d, d): a random subspace that follows the activations' anisotropy, the baseline a
    learned subspace must beat (any set of directions fitted to the data beats an isotropic
    random one)."""
    g = rng.standard_normal((cov_sqrt.shape[1], r))
    q, _ = np.linalg.qr(cov_sqrt @ g)
    return q


def covariance_sqrt(acts: np.ndarray) -> np.ndarray:
    """A symmetric square root of the covariance of ``acts`` (n, d)."""
    x = np.asarray(acts, dtype=np.float64)
    x = x - x.mean(axis=0)
    w, v = np.linalg.eigh(x.T @ x / max(len(x) - 1, 1))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def pair_jackknife(values: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """Mean of an (S, S) matrix of ordered-pair values (NaN = not computed) with a
    leave-one-seed-out jackknife interval: each replicate drops one seed as source and as
    target and averages the remaining pairs, so a seed never counts against itself."""
    v = np.asarray(values, dtype=np.float64)
    seeds = [i for i in range(v.shape[0]) if (~np.isnan(v[i])).any() or (~np.isnan(v[:, i])).any()]

    def stat(idx: Sequence[int]) -> float:
        sub = v[np.ix_(list(idx), list(idx))]
        ok = ~np.isnan(sub) & ~np.eye(len(idx), dtype=bool)
        return float(sub[ok].mean()) if ok.any() else float("nan")

    out = resampling.jackknife(seeds, stat, alpha)
    out["n_pairs"] = int((~np.isnan(v) & ~np.eye(len(v), dtype=bool)).sum())
    return out


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split of ``range(n)`` into two halves (sizes floor/ceil of n/2), each sorted."""
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------
def pair_bootstrap(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, float]:
    """Mean of an (S, S) matrix of ordered-pair values (NaN = not computed, e.g. the diagonal)
    with a percentile bootstrap interval over seeds: resample S seeds with replacement and
    average the values of all pairs of distinct resampled seeds."""
    # By hand, not scipy.stats.bootstrap: a resample that draws one seed only has no pair to
    # average and is skipped here, where scipy would put a NaN into the interval.
    v = np.asarray(values, dtype=np.float64)
    S = v.shape[0]
    ok = ~np.isnan(v)
    mean = float(v[ok].mean()) if ok.any() else float("nan")
    out = {"mean": mean, "std": float(v[ok].std(ddof=1)) if ok.sum() > 1 else float("nan"),
           "n_pairs": int(ok.sum()), "ci_low": float("nan"), "ci_high": float("nan")}
    if ok.sum() < 2 or S < 3:
        return out
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, S, S)
        sub = v[np.ix_(idx, idx)]
        distinct = idx[:, None] != idx[None, :]
        vals = sub[distinct & ~np.isnan(sub)]
        if len(vals):
            boots.append(vals.mean())
    if boots:
        out["ci_low"], out["ci_high"] = (float(q) for q in
                                         np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    return out


def seed_bootstrap(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, float]:
    """Mean of per-seed values (non-finite ones dropped) with a percentile bootstrap interval
    over seeds (:func:`scipy.stats.bootstrap`; NaN interval with fewer than two values)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    out = {"mean": float(v.mean()) if len(v) else float("nan"),
           "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": int(len(v)),
           "ci_low": float("nan"), "ci_high": float("nan")}
    if len(v) > 1:
        ci = stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=1 - alpha,
                             method="percentile", rng=np.random.default_rng(seed)
                             ).confidence_interval
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


# ------------------------------------------------------------------------------------------
# one configuration
# ------------------------------------------------------------------------------------------
@dataclass
class Geometry:
    """Everything :func:`run_geometry` computed for one configuration."""

    spectra: pd.DataFrame  # seed, set, n, index, energy, cumulative
    ranks: pd.DataFrame  # seed, set, n, energy_rank, participation, entropy_rank (rank vs count)
    transfer: pd.DataFrame  # seed_a, seed_b, r, level (directions/activations), kind, share
    angles: pd.DataFrame  # seed_a, seed_b, r, kind (cross/random), angle_deg
    summary: dict[str, Any]


def _seed_of(d: Path) -> int:
    return int(d.name[4:])


def _labels(features: pd.DataFrame, seed: int, label: str, min_frequency: float) -> np.ndarray:
    t = features[(features["seed"] == seed) & (features["label"] == label)]
    if "firing_frequency" in t.columns:
        t = t[t["firing_frequency"] > min_frequency]
    return np.sort(t["feature"].to_numpy())


def _contribution_grams(sae: Any, x: torch.Tensor, feature_sets: Sequence[np.ndarray],
                        batch_size: int = 4096) -> list[np.ndarray]:
    """For each feature set F: ``C^T C`` (d, d) of the reconstruction contribution
    ``C = f[:, F] @ W_dec[F]`` on the rows ``x`` (one encoding pass serves all sets)."""
    d = sae.cfg.d_in
    grams = [np.zeros((d, d)) for _ in feature_sets]
    idx = [torch.as_tensor(f, dtype=torch.long) for f in feature_sets]
    w_dec = sae.W_dec.detach().double()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            f = sae.encode(x[start:start + batch_size].to(sae.device)).double()
            for g, ix in zip(grams, idx, strict=True):
                if len(ix):
                    c = (f[:, ix.to(f.device)] @ w_dec[ix.to(w_dec.device)]).cpu().numpy()
                    g += c.T @ c
    return grams


def run_geometry(group_dirs: Sequence[str | Path], features: pd.DataFrame | str | Path,
                 eval_cache: ActivationCache | str | Path, *, energy: float = 0.9,
                 max_pairs: int | None = None, max_rows: int = 20000,
                 count_fractions: Sequence[float] = (0.25, 0.5, 1.0),
                 min_frequency: float = 0.0, min_features: int = 8, n_bootstrap: int = 1000,
                 seed: int = 0, device: str = "cpu") -> Geometry:
    """Subspace analysis of one configuration (see the module docstring).

    ``features``: the census table (``seed``, ``feature``, ``label``, ``firing_frequency``);
    features firing on at most ``min_frequency`` of the eval tokens are left out (dead latents
    sit at their seed-specific initialisation). Seeds with fewer than ``min_features`` unstable
    features are left out of the transfer and angle analyses. ``max_pairs`` samples ordered
    pairs (None: all).
    """
    rng = np.random.default_rng(seed)
    dirs = seed_dirs(group_dirs)
    seeds = [_seed_of(d) for d in dirs]
    if not isinstance(features, pd.DataFrame):
        from .stability import read_table

        features = read_table(features)
    need = {"seed", "feature", "label"}
    if not need <= set(features.columns):
        raise io.InputError(f"census table lacks columns {sorted(need - set(features.columns))}")
    cache = eval_cache if isinstance(eval_cache, ActivationCache) else \
        ActivationCache.open(eval_cache)
    saes = [load_sae(d, device=device) for d in dirs]
    d = saes[0].cfg.d_in
    if cache.d != d:
        raise io.InputError(f"{cache.path}: activations have d={cache.d}, the SAEs d_in={d}")
    unit = [unit_rows(s.decoder_directions().detach().cpu().numpy()) for s in saes]
    unstable = {s: _labels(features, s, "unstable", min_frequency) for s in seeds}
    stable = {s: _labels(features, s, "stable", min_frequency) for s in seeds}

    # -- spectra and rank vs count ------------------------------------------------------------
    spec_rows, rank_rows = [], []
    for s, u in zip(seeds, unit, strict=True):
        sets = {"unstable": u[unstable[s]], "stable": u[stable[s]],
                "random": unit_rows(rng.standard_normal((len(unstable[s]), d)))}
        for name, x in sets.items():
            if len(x) == 0:
                continue
            e = energy_spectrum(x)
            spec_rows.append(pd.DataFrame({"seed": s, "set": name, "n": len(x),
                                           "index": np.arange(1, len(e) + 1), "energy": e,
                                           "cumulative": np.cumsum(e)}))
            for frac in count_fractions:
                n = max(1, int(round(frac * len(x))))
                es = e if n == len(x) else energy_spectrum(
                    x[np.sort(rng.choice(len(x), n, replace=False))])
                rank_rows.append({"seed": s, "set": name, "n": n, "fraction": frac,
                                  "energy_rank": energy_rank(es, energy),
                                  "participation": participation_ratio(es),
                                  "entropy_rank": entropy_rank(es)})
    spectra = (pd.concat(spec_rows, ignore_index=True) if spec_rows else
               pd.DataFrame(columns=["seed", "set", "n", "index", "energy", "cumulative"]))
    ranks = pd.DataFrame(rank_rows, columns=["seed", "set", "n", "fraction", "energy_rank",
                                             "participation", "entropy_rank"])

    # -- halves, bases, activation Gram matrices --------------------------------------------
    usable = [i for i, s in enumerate(seeds) if len(unstable[s]) >= min_features]
    skipped = [seeds[i] for i in range(len(seeds)) if i not in usable]
    if skipped:
        log.info("seeds %s have fewer than %d unstable features; left out of transfer",
                 skipped, min_features)
    n_rows = min(max_rows, cache.n_tokens)
    x_eval = cache.load(0, n_rows)
    pca = pca_basis(x_eval)
    cov_sqrt = covariance_sqrt(x_eval)
    x_t = torch.from_numpy(x_eval)
    # one random rotation per seed: its first r columns are a uniformly random r-dim subspace
    rotations = {i: random_basis(d, d, np.random.default_rng([seed, 1, seeds[i]]))
                 for i in usable}
    halves, half_rank, full_rank, grams, grams_full = {}, {}, {}, {}, {}
    v_half, v_full, v_stable = {}, {}, {}  # right singular vectors, sliced to any rank below
    for i in progress(usable, desc="seeds", unit="seed"):
        s = seeds[i]
        h1, h2 = split_halves(len(unstable[s]), np.random.default_rng([seed, s]))
        halves[i] = (unstable[s][h1], unstable[s][h2])
        half_rank[i] = energy_rank(unit[i][halves[i][0]], energy)
        full_rank[i] = energy_rank(unit[i][unstable[s]], energy)
        v_half[i] = right_vectors(unit[i][halves[i][0]])
        v_full[i] = right_vectors(unit[i][unstable[s]])
        v_stable[i] = right_vectors(unit[i][stable[s]]) if len(stable[s]) else None
        grams[i], grams_full[i] = _contribution_grams(saes[i], x_t,
                                                      [halves[i][1], unstable[s]])

    pairs = [(a, b) for a in usable for b in usable if a != b]
    if max_pairs is not None and len(pairs) > max_pairs:
        pick = np.sort(rng.choice(len(pairs), max_pairs, replace=False))
        pairs = [pairs[k] for k in pick]

    # -- transfer (directions and activations) and principal angles ---------------------------
    t_rows, a_rows = [], []
    for a, b in progress(pairs, desc="pairs", unit="pair"):
        sa, sb = seeds[a], seeds[b]
        r = half_rank[a]
        held = unit[b][halves[b][1]]
        bases = {
            "cross": v_half[a][:, :r],
            "within": v_half[b][:, :r],
            "random_drawn": rotations[b][:, :r],
            "covariance": covariance_basis(cov_sqrt, r,
                                           np.random.default_rng([seed, 2, sa, sb])),
            "pca": pca[:, :r],
            "stable": v_stable[a][:, :r] if v_stable[a] is not None else None,
        }
        base = {"seed_a": sa, "seed_b": sb, "r": r, "d": d}
        for kind, B in bases.items():
            if B is None:
                continue
            t_rows.append(base | {"level": "directions", "kind": kind,
                                  "share": captured(B, held)})
            t_rows.append(base | {"level": "activations", "kind": kind,
                                  "share": captured_gram(B, grams[b])})
        for level in ("directions", "activations"):
            t_rows.append(base | {"level": level, "kind": "random", "share": r / d})
        # full sets: a's whole unstable subspace (rank r_a) against all of b's unstable features
        ra = full_rank[a]
        full = v_full[a][:, :ra]
        t_rows.append(base | {"r": ra, "level": "directions", "kind": "cross_full",
                              "share": captured(full, unit[b][unstable[sb]])})
        t_rows.append(base | {"r": ra, "level": "activations", "kind": "cross_full",
                              "share": captured_gram(full, grams_full[b])})
        for level in ("directions", "activations"):
            t_rows.append(base | {"r": ra, "level": level, "kind": "random_full",
                                  "share": ra / d})
        if a < b or (b, a) not in pairs:  # angles are symmetric: once per unordered pair
            rr = min(full_rank[a], full_rank[b])
            for kind, ang in (("cross", principal_angles(v_full[a][:, :rr], v_full[b][:, :rr])),
                              ("random", principal_angles(rotations[a][:, :rr],
                                                          rotations[b][:, :rr]))):
                a_rows.append(pd.DataFrame({"seed_a": sa, "seed_b": sb, "r": rr, "kind": kind,
                                            "angle_deg": np.degrees(ang)}))
    transfer = pd.DataFrame(t_rows, columns=["seed_a", "seed_b", "r", "d", "level", "kind",
                                             "share"])
    angles = (pd.concat(a_rows, ignore_index=True) if a_rows else
              pd.DataFrame(columns=["seed_a", "seed_b", "r", "kind", "angle_deg"]))
    summary = _summary(seeds, unstable, stable, ranks, transfer, angles, d, energy,
                       n_bootstrap, seed, skipped, n_rows, min_frequency)
    return Geometry(spectra=spectra, ranks=ranks, transfer=transfer, angles=angles,
                    summary=summary)


def _pair_matrix(df: pd.DataFrame, seeds: list[int], value: str = "share") -> np.ndarray:
    pos = {s: i for i, s in enumerate(seeds)}
    m = np.full((len(seeds), len(seeds)), np.nan)
    for sa, sb, v in zip(df["seed_a"], df["seed_b"], df[value], strict=True):
        m[pos[sa], pos[sb]] = v
    return m


def _summary(seeds: list[int], unstable: dict[int, np.ndarray], stable: dict[int, np.ndarray],
             ranks: pd.DataFrame, transfer: pd.DataFrame, angles: pd.DataFrame, d: int,
             energy: float, n_boot: int, seed: int, skipped: list[int], n_rows: int,
             min_frequency: float) -> dict[str, Any]:
    full = ranks[ranks["fraction"] == 1.0] if len(ranks) else ranks
    rank_stats: dict[str, Any] = {}
    for name in SETS:
        sub = full[full["set"] == name] if len(full) else full
        if len(sub):
            rank_stats[name] = {
                "n": seed_bootstrap(sub["n"], n_boot, seed),
                "energy_rank": seed_bootstrap(sub["energy_rank"], n_boot, seed),
                "energy_rank_over_n": seed_bootstrap(sub["energy_rank"] / sub["n"], n_boot,
                                                     seed),
                "participation": seed_bootstrap(sub["participation"], n_boot, seed),
                "entropy_rank": seed_bootstrap(sub["entropy_rank"], n_boot, seed),
            }
    tr: dict[str, Any] = {}
    for level in ("directions", "activations"):
        lv = transfer[transfer["level"] == level]
        mats = {k: _pair_matrix(g, seeds) for k, g in lv.groupby("kind")}
        tr[level] = {k: pair_bootstrap(m, n_boot, seed) for k, m in mats.items()}
        if "cross" in mats:
            diffs = {}
            for other in ("within", "random", "pca", "stable"):
                if other in mats:
                    diffs[f"cross_minus_{other}"] = pair_bootstrap(mats["cross"] - mats[other],
                                                                   n_boot, seed)
            if "within" in mats:
                diffs["cross_over_within"] = pair_bootstrap(mats["cross"] / mats["within"],
                                                            n_boot, seed)
            tr[level]["contrasts"] = diffs
    c5 = _c5_block(transfer)
    ang: dict[str, Any] = {}
    for kind, g in angles.groupby("kind"):
        per_pair = g.groupby(["seed_a", "seed_b"])["angle_deg"]
        ang[kind] = {
            "median_deg": float(g["angle_deg"].median()),
            "mean_deg": float(g["angle_deg"].mean()),
            "mean_cos2": pair_bootstrap(_sym(_pair_matrix(
                per_pair.apply(lambda a: float(np.mean(np.cos(np.radians(a)) ** 2)))
                .reset_index(name="share"), seeds)), n_boot, seed),
            "fraction_below_30deg": float((g["angle_deg"] < 30).mean()),
            "n_pairs": int(per_pair.ngroups),
        }
    r = transfer.loc[transfer["kind"] == "cross", "r"]
    return {
        "n_seeds": len(seeds), "d": d, "energy": energy, "eval_rows": n_rows,
        "min_frequency": min_frequency,
        "n_unstable": {str(s): int(len(v)) for s, v in unstable.items()},
        "n_stable": {str(s): int(len(v)) for s, v in stable.items()},
        "seeds_skipped": skipped,
        "r_half_mean": float(r.mean()) if len(r) else None,
        "ranks": rank_stats, "transfer": tr, "angles": ang, "c5": c5,
    }


C5_BASELINES = ("within", "covariance", "pca", "random")


def _c5_block(transfer: pd.DataFrame) -> dict[str, Any] | None:
    """What the C5 verdict reads: cross-seed transfer of the unstable directions, each baseline
    and each contrast, with leave-one-seed-out jackknife intervals over the seeds."""
    lv = transfer[transfer["level"] == "directions"]
    if not len(lv) or "cross" not in set(lv["kind"]):
        return None
    seeds = sorted(set(lv["seed_a"]) | set(lv["seed_b"]))
    mats = {k: _pair_matrix(g, seeds) for k, g in lv.groupby("kind")}
    block: dict[str, Any] = {"cross": pair_jackknife(mats["cross"]), "n_seeds": len(seeds)}
    for other in C5_BASELINES:
        if other in mats:
            block[other] = pair_jackknife(mats[other])
            block[f"cross_minus_{other}"] = pair_jackknife(mats["cross"] - mats[other])
    return block


def median_angle_intervals(angles: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per kind of subspace pair (``cross``: two seeds' unstable subspaces, ``random``: two
    random subspaces): the median principal angle of each seed pair, averaged over pairs, with
    a leave-one-seed-out jackknife interval (:func:`pair_jackknife`). ``angles`` is the table
    :func:`run_geometry` writes (``seed_a, seed_b, kind, angle_deg``)."""
    out = {}
    seeds = sorted(set(angles["seed_a"]) | set(angles["seed_b"]))
    for kind, g in angles.groupby("kind"):
        med = g.groupby(["seed_a", "seed_b"])["angle_deg"].median().reset_index(name="share")
        out[str(kind)] = {k: v for k, v in pair_jackknife(_sym(_pair_matrix(med, seeds))).items()
                          if k != "replicates"}
    return out


def _sym(m: np.ndarray) -> np.ndarray:
    """Fill the unset half of a matrix computed once per unordered pair."""
    out = m.copy()
    fill = np.isnan(out) & ~np.isnan(out.T)
    out[fill] = out.T[fill]
    return out


def write_geometry(g: Geometry, out_dir: str | Path) -> None:
    """Tables as Parquet and the summary as JSON, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("spectra", g.spectra), ("ranks", g.ranks), ("transfer", g.transfer),
                     ("angles", g.angles)):
        with io.atomic_path(out / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    io.write_json(out / "summary.json", g.summary)
