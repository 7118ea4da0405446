"""A synthetic model with known features: isolated point directions and low-rank groups.

Every token is a sparse sum of ground-truth components plus isotropic noise:

* a **point** feature ``i`` fires with probability ``point_prob`` and adds ``a * p_i`` (``p_i`` a
  unit direction, ``a > 0`` a magnitude);
* a **group** of rank ``r`` (orthonormal basis ``U_g``, d x r) fires with its own probability and
  adds ``a * U_g u`` with ``u`` uniform on the unit sphere of R^r, so that no basis inside the
  group's subspace is privileged (rank 1 is two antipodal point features, ``±U_g``);
* optionally a **massive coordinate**: coordinate 0 gets ``massive_mean + massive_std * N(0, 1)``
  on every token, the "massive activations" of many LM residual streams (one dimension with a
  large offset that carries most of ``E||x||^2``, and much of the variance too). It is not a
  ground-truth component: it is there to test that training stays healthy on such data.

The data go to disk through :func:`saestab.activations.write_cache` (a "forward" that looks rows
up by index: the token id of row ``t`` is ``t`` itself), so the same training and census rules
run on them unchanged. The ground truth goes beside the caches (:func:`write_truth`), and
:func:`recovery` measures what the SAEs of a configuration recovered of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import activations, io, resampling, stability
from .logs import get_logger

log = get_logger("synthetic")

TRUTH_FORMAT = "saestab.synthetic-truth"


@dataclass(frozen=True)
class GroupSpec:
    """``count`` groups of rank ``rank``, each firing with probability ``prob`` per token."""

    rank: int
    count: int
    prob: float


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generator draws (see the module docstring). Magnitudes are ``|N(mean, std)|``."""

    d: int = 64
    n_points: int = 24
    point_prob: float = 0.03
    groups: tuple[GroupSpec, ...] = field(default_factory=tuple)
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.2
    noise_std: float = 0.01
    massive_mean: float = 0.0
    massive_std: float = 0.0
    n_train: int = 65536
    n_eval: int = 8192
    context_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_points < 0:
            raise ValueError(f"need d >= 1 and n_points >= 0, got d={self.d}, "
                             f"n_points={self.n_points}")
        for g in self.groups:
            if not 1 <= g.rank <= self.d or g.count < 0 or not 0 <= g.prob <= 1:
                raise ValueError(f"bad group spec {g} (need 1 <= rank <= d, count >= 0, "
                                 f"0 <= prob <= 1)")
        if not 0 <= self.point_prob <= 1:
            raise ValueError(f"point_prob must be in [0, 1], got {self.point_prob}")
        if self.n_components == 0 and self.noise_std <= 0:
            raise ValueError("the synthetic model needs a point feature, a group or noise "
                             "(noise alone: isotropic Gaussian data, a known negative for C5)")
        if self.massive_std < 0:
            raise ValueError(f"massive_std must be >= 0, got {self.massive_std}")
        if self.n_train < 1 or self.n_eval < 1 or self.context_length < 1:
            raise ValueError("n_train, n_eval and context_length must be positive")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SyntheticSpec:
        """From a config mapping (``groups`` a list of ``{rank, count, prob}`` mappings)."""
        kw = dict(cfg)
        kw["groups"] = tuple(GroupSpec(int(g["rank"]), int(g["count"]), float(g["prob"]))
                             for g in kw.get("groups", ()))
        return cls(**kw)

    @property
    def group_ranks(self) -> list[int]:
        """Rank of every group, in order."""
        return [g.rank for g in self.groups for _ in range(g.count)]

    @property
    def n_components(self) -> int:
        return self.n_points + len(self.group_ranks)

    @property
    def total_dims(self) -> int:
        """Directions the ground truth spans in all (points + group ranks)."""
        return self.n_points + sum(self.group_ranks)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Truth:
    """The ground truth: unit point directions and orthonormal group bases."""

    points: np.ndarray  # (n_points, d)
    groups: list[np.ndarray]  # each (d, r)
    point_prob: float
    group_probs: list[float]

    @property
    def d(self) -> int:
        return int(self.points.shape[1])  # (0, d) when there are no point features

    def components(self) -> pd.DataFrame:
        """One row per component: ``component`` (index), ``kind`` (point/group), ``index``
        within its kind, ``rank`` (1 for points), ``prob``."""
        rows = [{"kind": "point", "index": i, "rank": 1, "prob": self.point_prob}
                for i in range(len(self.points))]
        rows += [{"kind": "group", "index": g, "rank": int(U.shape[1]), "prob": p}
                 for g, (U, p) in enumerate(zip(self.groups, self.group_probs, strict=True))]
        df = pd.DataFrame(rows, columns=["kind", "index", "rank", "prob"])
        df.insert(0, "component", np.arange(len(df)))
        return df

    def bases(self) -> list[np.ndarray]:
        """Orthonormal basis (d, r) of every component, points first, in component order."""
        return [p[:, None] for p in self.points] + list(self.groups)


def make_truth(spec: SyntheticSpec) -> Truth:
    """Draw the ground-truth directions. When points and groups together span at most ``d``
    directions they are made exactly orthogonal (one QR of a Gaussian matrix); otherwise each
    group's basis is orthonormal and points are random unit vectors (superposition)."""
    rng = np.random.default_rng([spec.seed, 0])
    d, ranks = spec.d, spec.group_ranks
    total = spec.total_dims
    if total <= d:
        q, _ = np.linalg.qr(rng.standard_normal((d, total)))
        cols = q.T
        points = cols[:spec.n_points]
        groups, at = [], spec.n_points
        for r in ranks:
            groups.append(np.ascontiguousarray(cols[at:at + r].T))
            at += r
    else:
        points = rng.standard_normal((spec.n_points, d))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        groups = [np.linalg.qr(rng.standard_normal((d, r)))[0] for r in ranks]
    probs = [g.prob for g in spec.groups for _ in range(g.count)]
    return Truth(points=np.ascontiguousarray(points), groups=groups, point_prob=spec.point_prob,
                 group_probs=probs)


def sample(spec: SyntheticSpec, truth: Truth, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` tokens of the synthetic model, (n, d) float32."""
    d = truth.d
    x = np.zeros((n, d), dtype=np.float64)

    def magnitudes(size: int) -> np.ndarray:
        return np.abs(rng.normal(spec.magnitude_mean, spec.magnitude_std, size))

    if len(truth.points):
        fire = rng.random((n, len(truth.points))) < truth.point_prob
        coef = np.where(fire, magnitudes(fire.size).reshape(fire.shape), 0.0)
        x += coef @ truth.points
    for U, p in zip(truth.groups, truth.group_probs, strict=True):
        rows = np.nonzero(rng.random(n) < p)[0]
        u = rng.standard_normal((len(rows), U.shape[1]))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        x[rows] += (u * magnitudes(len(rows))[:, None]) @ U.T
    if spec.noise_std > 0:
        x += rng.normal(0.0, spec.noise_std, (n, d))
    if spec.massive_mean != 0 or spec.massive_std > 0:  # drawn last: other samples unchanged
        x[:, 0] += spec.massive_mean + spec.massive_std * rng.standard_normal(n)
    return x.astype(np.float32)


def write_split(out_dir: str | Path, x: np.ndarray, *, context_length: int,
                meta: Mapping[str, Any]) -> activations.ActivationCache:
    """Write rows ``x`` as an activation cache through :func:`activations.write_cache`.

    Row ``t`` gets token id ``t`` (its index in the split) and position ``(t // T, t % T)``;
    trailing rows that do not fill a context of ``context_length`` are dropped.
    """
    n = (len(x) // context_length) * context_length
    if n == 0:
        raise ValueError(f"{len(x)} rows make no context of {context_length}")
    table = torch.from_numpy(np.ascontiguousarray(x[:n]))
    contexts = np.arange(n, dtype=np.int64).reshape(-1, context_length)
    return activations.write_cache(
        out_dir, lambda batch: table[batch], contexts, d=x.shape[1], bos_token_id=None,
        batch_size=max(1, 8192 // context_length), outlier_factor=None,
        shard_tokens=1 << 16, meta=dict(meta))


def write_truth(truth: Truth, spec: SyntheticSpec, path: str | Path) -> None:
    """Ground truth as ``.npz`` (``points``, ``group_<g>`` bases) plus a JSON sidecar."""
    path = Path(path)
    arrays = {"points": truth.points} | {f"group_{g}": U for g, U in enumerate(truth.groups)}
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    io.write_json(path.with_suffix(".json"), {
        "format": TRUTH_FORMAT, "spec": spec.to_json(), "n_groups": len(truth.groups),
        "components": truth.components().to_dict(orient="records")})


def read_truth(path: str | Path) -> Truth:
    """Read a ground truth written by :func:`write_truth`."""
    path = Path(path)
    meta = io.read_json(path.with_suffix(".json"), what="synthetic ground-truth sidecar")
    if meta.get("format") != TRUTH_FORMAT:
        raise io.InputError(f"{path.with_suffix('.json')}: expected format {TRUTH_FORMAT!r}")
    keys = ("points", *(f"group_{g}" for g in range(int(meta["n_groups"]))))
    z = io.load_npz(path, keys, "synthetic ground truth (.npz)")
    points, groups = z["points"], [z[k] for k in keys[1:]]
    comps = meta["components"]
    return Truth(points=points, groups=groups, point_prob=float(meta["spec"]["point_prob"]),
                 group_probs=[c["prob"] for c in comps if c["kind"] == "group"])


def generate(spec: SyntheticSpec, out_train: str | Path, out_eval: str | Path,
             truth_path: str | Path, *, name: str = "synthetic",
             hook: str = "features") -> Truth:
    """Draw the ground truth and both splits; write the two caches and the truth file."""
    truth = make_truth(spec)
    for split, n, stream in (("train", spec.n_train, 1), ("eval", spec.n_eval, 2)):
        x = sample(spec, truth, n, np.random.default_rng([spec.seed, stream]))
        cache = write_split(out_train if split == "train" else out_eval, x,
                            context_length=spec.context_length,
                            meta={"model": name, "weights": "synthetic", "hook": hook,
                                  "split": split, "synthetic": spec.to_json()})
        log.info("%s: %d rows, d=%d, mean squared norm %.3f", split, cache.n_tokens, cache.d,
                 cache.stats.mean_sq_norm)
    write_truth(truth, spec, truth_path)
    return truth


# ------------------------------------------------------------------------------------------
# recovery analysis
# ------------------------------------------------------------------------------------------
def principal_angles(A: np.ndarray, B: np.ndarray, dim: int = 0) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of orthonormal ``A`` and
    ``B``; the number of angles is ``max(rank A, rank B, dim)``, a missing dimension counting
    as pi/2 (so that a span that lacks part of the other, or of a ``dim``-dimensional target,
    is penalised, not ignored)."""
    from .subspaces import principal_angles as angles  # one implementation (scipy's)

    n = max(A.shape[1], B.shape[1], dim)
    ang = angles(A, B)
    return np.concatenate([ang, np.full(n - len(ang), np.pi / 2)])


def span_basis(directions: np.ndarray, r: int) -> np.ndarray:
    """Orthonormal basis (d, min(r, n)) of the top singular directions of ``directions`` (n, d)."""
    if len(directions) == 0:
        return np.zeros((directions.shape[1], 0))
    _, _, vt = np.linalg.svd(directions, full_matrices=False)
    return vt[:min(r, len(directions))].T


def assign_latents(directions: np.ndarray, truth: Truth,
                   threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Assign each latent (unit decoder direction, rows of ``directions``) to the component whose
    subspace holds most of its squared norm, if that share is at least ``threshold``.

    Returns ``(component, share)``: component index (points first, then groups; -1 when
    unassigned) and the share of the best component.
    """
    unit = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    shares = np.stack([np.sum((unit @ B) ** 2, axis=1) for B in truth.bases()], axis=1)
    best = shares.argmax(axis=1)
    share = shares[np.arange(len(unit)), best]
    return np.where(share >= threshold, best, -1), share


@dataclass
class Recovery:
    """What :func:`recovery` measured."""

    latents: pd.DataFrame  # per (seed, latent): assignment, share, p_hat, label
    components: pd.DataFrame  # per (seed, component): best cosine, latents, angles
    cross_seed: pd.DataFrame  # per (component, seed pair): angles between recovered spans
    by_rank: pd.DataFrame  # per kind and rank: the headline numbers
    summary: dict[str, Any]


def recovery(directions: Sequence[np.ndarray], seeds: Sequence[int], truth: Truth,
             features: pd.DataFrame, *, assign_threshold: float = 0.5,
             theta: float | None = None, eps: float = 0.05, high_rank: int = 4) -> Recovery:
    """Recovery of the ground truth by the SAEs of one configuration.

    ``directions``: per seed, the (m, d) decoder directions; ``features``: the census table
    (``seed``, ``feature``, ``p_hat``, ``label``) with each seed as anchor. Per latent: the
    component it is assigned to (:func:`assign_latents`) and its stability. Per component and
    seed: the best cosine of any latent to each of the component's basis directions (for a point
    feature: the usual best-match cosine), how many latents it got, and the principal angles
    between its true subspace and the top-``r`` span of its latents; across seeds: the angles
    between two seeds' recovered spans. With ``theta`` (the census's match threshold, and ``eps``
    its label threshold), the summary also holds the seed-level ``c6`` block (:func:`c6_block`)
    and the intervals the figures draw (:func:`recovery_intervals`).
    """
    comps = truth.components()
    bases = truth.bases()
    lat_rows, comp_rows, spans = [], [], {}
    for seed, D in zip(seeds, directions, strict=True):
        unit = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
        comp, share = assign_latents(unit, truth, assign_threshold)
        lat_rows.append(pd.DataFrame({"seed": seed, "feature": np.arange(len(unit)),
                                      "component": comp, "share": share}))
        for c, B in enumerate(bases):
            r = B.shape[1]
            mine = unit[comp == c]
            span = span_basis(mine, r)
            spans[(seed, c)] = span
            ang = principal_angles(B, span)
            comp_rows.append({
                "seed": seed, "component": c, "n_latents": int(len(mine)),
                # best cosine of any latent to each basis direction, averaged over the basis
                "best_cosine": float(np.abs(unit @ B).max(axis=0).mean()),
                "overlap": float(np.mean(np.cos(ang) ** 2)),
                "max_angle_deg": float(np.degrees(ang.max())),
                "mean_angle_deg": float(np.degrees(ang.mean())),
            })
    latents = pd.concat(lat_rows, ignore_index=True)
    need = {"seed", "feature", "p_hat", "label"}
    if not need <= set(features.columns):
        raise io.InputError(f"census table lacks columns {sorted(need - set(features.columns))}")
    latents = latents.merge(features[["seed", "feature", "p_hat", "label"]],
                            on=["seed", "feature"], how="left")
    latents = latents.merge(comps[["component", "kind", "rank"]], on="component", how="left")
    latents["kind"] = latents["kind"].fillna("none")
    latents["rank"] = latents["rank"].fillna(0).astype(int)
    components = pd.DataFrame(comp_rows).merge(comps, on="component")

    cross = []
    seeds = list(seeds)
    for c in range(len(bases)):
        for i, a in enumerate(seeds):
            for b in seeds[i + 1:]:
                ang = principal_angles(spans[(a, c)], spans[(b, c)], bases[c].shape[1])
                cross.append({"component": c, "seed_a": a, "seed_b": b,
                              "overlap": float(np.mean(np.cos(ang) ** 2)),
                              "max_angle_deg": float(np.degrees(ang.max()))})
    cross_seed = pd.DataFrame(cross, columns=["component", "seed_a", "seed_b", "overlap",
                                              "max_angle_deg"]).merge(comps, on="component")
    by_rank = _by_rank(latents, components, cross_seed)
    summary = {
        "n_seeds": len(seeds), "n_latents": int(len(directions[0])),
        "assign_threshold": assign_threshold,
        "unassigned_fraction": float((latents["component"] < 0).mean()),
        "points_best_cosine_min": (float(components.loc[components.kind == "point",
                                                        "best_cosine"].min())
                                   if (components.kind == "point").any() else None),
        "by_rank": by_rank.to_dict(orient="records"),
    }
    if theta is not None:
        maxcos = _decoder_maxcos(directions)
        summary["c6"] = c6_block(latents, cross_seed, directions, seeds, theta, high_rank,
                                 maxcos=maxcos)
        summary["c6"]["by_rank"] = summary["by_rank"]
        summary["intervals"] = recovery_intervals(latents, components, cross_seed, maxcos, seeds,
                                                  theta, eps)
    return Recovery(latents=latents, components=components, cross_seed=cross_seed,
                    by_rank=by_rank, summary=summary)


def _latent_interval(maxcos: np.ndarray, latents: pd.DataFrame, mask: pd.Series,
                     pos: Mapping[int, int], theta: float, eps: float | None = None
                     ) -> dict[str, Any] | None:
    """Mean p̂ of the latents selected by ``mask`` (with ``eps``: the share of them labelled
    stable) with a leave-one-seed-out jackknife interval; every replicate recomputes each
    latent's p̂ against the seeds it keeps, so no seed is matched against itself. None when no
    latent is selected."""
    chosen = latents[mask]
    per_seed = {pos[s]: g["feature"].to_numpy() for s, g in chosen.groupby("seed")}
    if not per_seed:
        return None

    def stat(idx: Sequence[int]) -> float:
        vals = []
        for a in idx:
            feats = per_seed.get(a)
            if feats is None or len(feats) == 0:
                continue
            others = [b for b in idx if b != a]
            X = (maxcos[a][others][:, feats].astype(np.float32) >= np.float32(theta)).sum(axis=0)
            vals.append(X / len(others) if eps is None else
                        (stability._label_codes(X, len(others), eps) == 0).astype(np.float64))
        return float(np.concatenate(vals).mean()) if vals else float("nan")

    return resampling.jackknife(list(range(maxcos.shape[0])), stat)


def _overlap_interval(cross_seed: pd.DataFrame, mask: pd.Series, pos: Mapping[int, int]
                      ) -> dict[str, Any] | None:
    """Cross-seed overlap of the recovered subspaces of the components selected by ``mask``:
    mean over seed pairs with a leave-one-seed-out jackknife interval; None when none."""
    from .subspaces import pair_jackknife

    cs = cross_seed[mask]
    if not len(cs):
        return None
    m = np.full((len(pos), len(pos)), np.nan)
    for (a, b), g in cs.groupby(["seed_a", "seed_b"]):
        m[pos[a], pos[b]] = m[pos[b], pos[a]] = g["overlap"].mean()
    return pair_jackknife(m)


def _decoder_maxcos(directions: Sequence[np.ndarray]) -> np.ndarray:
    from .matching import pairwise_max_cosine

    maxcos, _ = pairwise_max_cosine([np.asarray(d, dtype=np.float32) for d in directions])
    return maxcos


def c6_block(latents: pd.DataFrame, cross_seed: pd.DataFrame,
             directions: Sequence[np.ndarray], seeds: Sequence[int], theta: float,
             high_rank: int = 4, maxcos: np.ndarray | None = None) -> dict[str, Any]:
    """What the C6 verdict reads, with leave-one-seed-out jackknife intervals over the seeds
    (p̂ recomputed on every subset of seeds, so no seed is matched against itself):

    ``groups`` (groups of rank >= ``high_rank``): cross-seed overlap of the recovered subspaces and
    the mean p̂ of the latents assigned to them; ``points``: mean p̂ of point-feature latents;
    ``null_rank1``: the group statistics on rank-1 groups, which behave like points (a known
    negative: their latents are stable, so the group rule must fail on them). ``maxcos``: the
    seeds' pairwise best-match table, computed from ``directions`` when not given.
    """
    maxcos = _decoder_maxcos(directions) if maxcos is None else maxcos
    seeds = [int(s) for s in seeds]
    pos = {s: i for i, s in enumerate(seeds)}

    def group_stats(lat_mask: pd.Series, cs_mask: pd.Series, ranks: list[int]
                    ) -> dict[str, Any] | None:
        if not ranks:
            return None
        return {"ranks": ranks, "overlap": _overlap_interval(cross_seed, cs_mask, pos),
                "latent_p_hat": _latent_interval(maxcos, latents, lat_mask, pos, theta)}

    group = (latents["kind"] == "group")
    cs_group = cross_seed["kind"] == "group"
    high = sorted({int(r) for r in cross_seed.loc[cs_group & (cross_seed["rank"] >= high_rank),
                                                  "rank"]})
    return {
        "high_rank": high_rank, "theta": theta, "n_seeds": len(seeds),
        "groups": group_stats(group & (latents["rank"] >= high_rank),
                              cs_group & (cross_seed["rank"] >= high_rank), high),
        "points": {"latent_p_hat": _latent_interval(maxcos, latents, latents["kind"] == "point",
                                                    pos, theta)},
        "null_rank1": group_stats(group & (latents["rank"] == 1),
                                  cs_group & (cross_seed["rank"] == 1),
                                  [1] if (cs_group & (cross_seed["rank"] == 1)).any() else []),
    }


def _without_replicates(iv: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if iv is None else {k: v for k, v in iv.items() if k != "replicates"}


def recovery_intervals(latents: pd.DataFrame, components: pd.DataFrame,
                       cross_seed: pd.DataFrame, maxcos: np.ndarray, seeds: Sequence[int],
                       theta: float, eps: float) -> dict[str, list[dict[str, Any]]]:
    """Seed-level intervals of what the recovery figures show.

    ``by_rank``, per component type (point features; groups of each rank): the mean p̂ of the
    latents assigned to it and the share of them labelled stable (jackknife over seeds with p̂
    recomputed, :func:`_latent_interval`), the overlap of the recovered subspaces with the truth
    (one value per seed, t interval of the mean over seeds) and their cross-seed overlap (pair
    jackknife). ``components``, per ground-truth component: the mean p̂ of its latents
    (jackknife) and its largest principal angle to the truth (t interval over seeds).
    """
    pos = {int(s): i for i, s in enumerate(seeds)}
    by_rank = []
    for (kind, rank), comp in components.groupby(["kind", "rank"], sort=True):
        lat = (latents["kind"] == kind) & (latents["rank"] == rank)
        cs = (cross_seed["kind"] == kind) & (cross_seed["rank"] == rank)
        by_rank.append({
            "kind": str(kind), "rank": int(rank),
            "latent_p_hat": _without_replicates(
                _latent_interval(maxcos, latents, lat, pos, theta)),
            "latent_stable_fraction": _without_replicates(
                _latent_interval(maxcos, latents, lat, pos, theta, eps)),
            "truth_overlap": _without_replicates(
                resampling.mean_of(comp.groupby("seed")["overlap"].mean().to_numpy())),
            "cross_seed_overlap": _without_replicates(_overlap_interval(cross_seed, cs, pos)),
        })
    per_component = []
    for c, comp in components.groupby("component", sort=True):
        per_component.append({
            "component": int(c), "kind": str(comp["kind"].iloc[0]),
            "rank": int(comp["rank"].iloc[0]),
            "p_hat": _without_replicates(
                _latent_interval(maxcos, latents, latents["component"] == c, pos, theta)),
            "max_angle_deg": _without_replicates(
                resampling.mean_of(comp["max_angle_deg"].to_numpy())),
        })
    return {"by_rank": by_rank, "components": per_component}


def _by_rank(latents: pd.DataFrame, components: pd.DataFrame,
             cross_seed: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (kind, rank), comp in components.groupby(["kind", "rank"], sort=True):
        lat = latents[(latents.kind == kind) & (latents["rank"] == rank)]
        cs = cross_seed[(cross_seed.kind == kind) & (cross_seed["rank"] == rank)]
        rows.append({
            "kind": kind, "rank": int(rank), "n_components": int(comp.component.nunique()),
            "latents_per_component": float(comp.n_latents.mean()),
            "latent_p_hat": float(lat.p_hat.mean()) if len(lat) else float("nan"),
            "latent_stable_fraction": float((lat.label == "stable").mean())
            if len(lat) else float("nan"),
            "latent_unstable_fraction": float((lat.label == "unstable").mean())
            if len(lat) else float("nan"),
            "best_cosine": float(comp.best_cosine.mean()),
            "best_cosine_min": float(comp.best_cosine.min()),
            "truth_overlap": float(comp.overlap.mean()),
            "truth_max_angle_deg": float(comp.max_angle_deg.mean()),
            "cross_seed_overlap": float(cs.overlap.mean()) if len(cs) else float("nan"),
            "cross_seed_max_angle_deg": float(cs.max_angle_deg.mean())
            if len(cs) else float("nan"),
        })
    return pd.DataFrame(rows)


def write_recovery(rec: Recovery, out_dir: str | Path) -> None:
    """Tables as Parquet and the summary as JSON, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("latents", rec.latents), ("components", rec.components),
                     ("cross_seed", rec.cross_seed), ("by_rank", rec.by_rank)):
        with io.atomic_path(out / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    io.write_json(out / "summary.json", rec.summary)
