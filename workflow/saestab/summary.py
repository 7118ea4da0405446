"""Claim-by-claim summary of a study (``results/summary.{md,json}``), generated from its outputs.

Every verdict is a test that can fail (SPEC, "What reproduced means here"). For each claim the
summary reports a statistic with a seed-level interval (leave-one-seed-out jackknife, see
:mod:`saestab.resampling`), the effect-size floor it must clear and the baselines it must beat,
and decides:

- **reproduced**: the interval clears the floor (and every baseline);
- **not reproduced**: the interval lies on the other side of the floor;
- **inconclusive**: the interval straddles the floor, or a gate failed: the SAEs behind the
  claim are *unhealthy* (too many dead latents, decoders that barely left their initialisation)
  or *not converged* (the stable share still moves between the last two snapshots);
- **not run**: the outputs the claim needs are absent.

Three kinds of rows: ``claim`` (the trained configuration), ``null`` (a known negative built for
that claim and pushed through the same rule: it must read "not reproduced", otherwise the rule is
broken) and ``random-weights`` (the same claim on the dead-salmon configuration, the paper's
comparison; where it holds there too the claim is not specific to trained models). Floors are the
project's defaults (``summary.floors`` in the config), not the paper's numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import io, resampling

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = (
    "reproduced", "not reproduced", "inconclusive", "not run")
CLAIM, NULL, RANDOM = "claim", "null", "random-weights"
STAGES = ("census", "function", "geometry", "pool", "autointerp")
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")

FLOORS: dict[str, float] = {
    "c1_share": 0.05,  # stable and unstable each at least this share of live features
    "c1_endpoint_ratio": 2.0,  # endpoint mass / homogeneous-binomial endpoint mass
    "c2_stable_difference": 0.05,  # ReLU+L1 − TopK stable share
    "c2_ev_difference": 0.01,  # TopK − ReLU+L1 EV
    "c3_ratio": 1.5,  # ΔEV(stable) / ΔEV(matched unstable); its lower bound must exceed 1
    "c4_frequency_ratio": 0.8,  # unstable / stable median frequency at most this
    "c4_share_difference": 0.02,  # within-bin top-token share, unstable − stable
    "c5_margin": 0.05,  # cross-seed transfer − covariance-matched random subspace
    "c6_overlap": 0.9,  # cross-seed subspace overlap of groups of rank >= 4
    "c6_group_p_hat": 0.5,  # latent p̂ of those groups at most this
    "c6_point_p_hat": 0.9,  # point features' p̂ at least this
    "c7_stability_difference": 0.02,  # pool − continued standard, mutual stability
    "c7_ev_tolerance": 0.01,  # pool EV at most this below the continued standard
    "control_difference": 0.05,  # stable share trained − random weights
}
HEALTH: dict[str, float] = {
    "max_dead_fraction": 0.10,  # dead on the train split
    "max_decoder_init_cosine": 0.90,  # median cosine of decoder rows to their own init
}


@dataclass
class Row:
    """One row of the summary."""

    id: str
    kind: str  # claim | null | random-weights
    title: str
    statistic: str
    paper: str
    verdict: str = NOT_RUN
    reason: str | None = None  # why the verdict is what it is (gates, missing outputs)
    rule_verdict: str | None = None  # what the rule alone says, before the gates
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    floor: str | None = None  # the effect-size floor, in words
    baselines: dict[str, Any] = field(default_factory=dict)
    configuration: str | None = None
    convergence: dict[str, Any] = field(default_factory=dict)  # per configuration read
    health: dict[str, Any] = field(default_factory=dict)  # per configuration read
    # per configuration read: its mean L0 on eval and the L0 its recipe aims at (a stability
    # share means little without the sparsity it was measured at)
    l0: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """One SAE configuration and the directories its stages wrote (absent stages: None)."""

    model: str
    weights: str
    hook: str
    variant: str
    architecture: str
    census: Path | None = None
    function: Path | None = None
    geometry: Path | None = None
    pool: Path | None = None
    autointerp: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.model} {self.weights} {self.hook} {self.variant}"

    def read(self, stage: str, file: str) -> dict[str, Any] | None:
        """A stage's JSON output, or None when the stage did not run for this configuration."""
        d = getattr(self, stage)
        if d is None or not (Path(d) / file).is_file():
            return None
        return json.loads((Path(d) / file).read_text())


@dataclass
class Study:
    configs: list[Config]
    # synthetic-model configurations: {"census", "recovery", "geometry"} directories and
    # "null": True for a model without planted structure (isotropic Gaussian data)
    synthetic: list[dict[str, Any]] = field(default_factory=list)
    main_variant: str | None = None  # the configuration C1, C3–C5, C7 are read from
    floors: dict[str, float] = field(default_factory=lambda: dict(FLOORS))
    health: dict[str, float] = field(default_factory=lambda: dict(HEALTH))
    tokens: dict[str, Path] = field(default_factory=dict)  # model -> its token directory

    def main(self, weights: str = "trained") -> Config | None:
        """The main configuration: ``main_variant`` (else the first TopK-family one, else the
        first) among those with the given weights."""
        cs = [c for c in self.configs if c.weights == weights]
        if self.main_variant is not None:
            cs = [c for c in cs if c.variant == self.main_variant]
        topk = [c for c in cs if c.architecture in TOPK_FAMILY]
        return (topk or cs or [None])[0]

    def twin(self, c: Config | None, weights: str) -> Config | None:
        """The configuration with the same model, hook and variant on other weights."""
        if c is None:
            return None
        return next((o for o in self.configs if o.weights == weights and o.model == c.model
                     and o.hook == c.hook and o.variant == c.variant), None)


# ------------------------------------------------------------------------------------------
# decisions
# ------------------------------------------------------------------------------------------
def _finite(iv: Mapping[str, Any] | None) -> bool:
    return iv is not None and all(
        iv.get(k) is not None and np.isfinite(iv[k]) for k in ("mean", "ci_low", "ci_high"))


def at_least(iv: Mapping[str, Any] | None, floor: float) -> str:
    """Reproduced when the whole interval is at or above ``floor``, not reproduced when it lies
    below, inconclusive when it straddles it (or is undefined)."""
    if not _finite(iv):
        return INCONCLUSIVE
    if iv["ci_low"] >= floor:  # type: ignore[index]
        return REPRODUCED
    return NOT_REPRODUCED if iv["ci_high"] < floor else INCONCLUSIVE  # type: ignore[index]


def at_most(iv: Mapping[str, Any] | None, ceiling: float) -> str:
    """The mirror of :func:`at_least`: reproduced when the whole interval is at or below."""
    if not _finite(iv):
        return INCONCLUSIVE
    if iv["ci_high"] <= ceiling:  # type: ignore[index]
        return REPRODUCED
    return NOT_REPRODUCED if iv["ci_low"] > ceiling else INCONCLUSIVE  # type: ignore[index]


def ratio_rule(iv: Mapping[str, Any] | None, floor: float) -> str:
    """C3's rule: the ratio is at least ``floor`` with its lower bound above 1; not reproduced
    when even the upper bound stays below ``floor``."""
    if not _finite(iv):
        return INCONCLUSIVE
    if iv["mean"] >= floor and iv["ci_low"] > 1:  # type: ignore[index]
        return REPRODUCED
    return NOT_REPRODUCED if iv["ci_high"] < floor else INCONCLUSIVE  # type: ignore[index]


def combine(*verdicts: str) -> str:
    """All parts reproduced → reproduced; any part not reproduced → not reproduced."""
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def health_of(census: Mapping[str, Any] | None, limits: Mapping[str, float]) -> dict[str, Any]:
    """``status`` healthy / unhealthy / unknown of one configuration from its census summary,
    with the dead share (train split) and the decoders' median cosine to their initialisation."""
    if census is None:
        return {"status": "unknown", "reason": "no census"}
    dead = (census.get("dead_fraction_train") or {}).get("mean")
    init = (census.get("decoder_init_cosine") or {}).get("mean")
    reasons = []
    if dead is not None and dead > limits["max_dead_fraction"]:
        reasons.append(f"{dead:.0%} dead latents (> {limits['max_dead_fraction']:.0%})")
    if init is not None and init > limits["max_decoder_init_cosine"]:
        reasons.append(f"decoders at cosine {init:.2f} to their initialisation "
                       f"(> {limits['max_decoder_init_cosine']})")
    out = {"dead_fraction_train": dead, "decoder_init_cosine": init}
    if reasons:
        return out | {"status": "unhealthy", "reason": "; ".join(reasons)}
    if dead is None:
        return out | {"status": "unknown", "reason": "dead share on the train split not measured"}
    return out | {"status": "healthy"}


def _gate(row: Row, configs: Sequence[Config | None], study: Study) -> Row:
    """Record the rule's verdict, then apply the health and convergence gates of the
    configurations the row was computed from."""
    row.rule_verdict = row.verdict
    reasons_h, reasons_c = [], []
    for c in configs:
        if c is None:
            continue
        s = c.read("census", "summary.json")
        h = health_of(s, study.health)
        conv = (s or {}).get("convergence") or {"status": "unknown",
                                                "reason": "no training-length snapshots"}
        row.health[c.name] = h
        row.convergence[c.name] = conv
        row.l0.append({"configuration": c.name, "variant": c.variant, "weights": c.weights,
                       "l0": ((s or {}).get("l0") or {}).get("mean"),
                       "target_l0": (s or {}).get("target_l0")})
        if h["status"] == "unhealthy":
            reasons_h.append(f"{c.variant} on {c.weights} weights: {h['reason']}")
        if conv["status"] == "not converged":
            reasons_c.append(f"{c.variant} on {c.weights} weights: stable share "
                             f"{conv['stable'][0]:.3f} → {conv['stable'][1]:.3f} between "
                             f"epochs {conv['epochs'][0]} and {conv['epochs'][1]}")
        elif conv["status"] == "unknown":
            reasons_c.append(f"{c.variant} on {c.weights} weights: convergence not measured")
    if row.verdict == NOT_RUN:
        return row
    if reasons_h:
        row.verdict, row.reason = INCONCLUSIVE, "unhealthy SAEs: " + "; ".join(reasons_h)
    elif reasons_c:
        row.verdict, row.reason = INCONCLUSIVE, "not converged: " + "; ".join(reasons_c)
    return row


def _set(row: Row, iv: Mapping[str, Any] | None, verdict: str, **details: Any) -> Row:
    if iv is not None:
        row.value = _f(iv.get("mean"))
        row.ci_low = _f(iv.get("ci_low"))
        row.ci_high = _f(iv.get("ci_high"))
    row.verdict = verdict
    row.details.update(details)
    return row


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _brief(iv: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An interval without its replicates, for the JSON rows."""
    if iv is None:
        return None
    return {k: iv[k] for k in ("mean", "ci_low", "ci_high", "n") if k in iv}


def _missing(row: Row, reason: str) -> Row:
    row.verdict, row.reason = NOT_RUN, reason
    return row


# ------------------------------------------------------------------------------------------
# C1: a stability signal that separates two populations
# ------------------------------------------------------------------------------------------
C1_TITLE = "stability signal"
C1_STAT = ("endpoint mass (stable + unstable share of live latents) over what a homogeneous "
           "Binomial(N, mean p̂) model predicts")
C1_PAPER = "p̂ separates a stable and an unstable population"


def c1_rule(stats: Mapping[str, Any], floors: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    """Both populations exist (each ≥ ``c1_share`` of live latents) and the endpoint mass is at
    least ``c1_endpoint_ratio`` × the homogeneous model's."""
    parts = {"stable_share": at_least(stats["stable"], floors["c1_share"]),
             "unstable_share": at_least(stats["unstable"], floors["c1_share"]),
             "endpoint_ratio": at_least(stats["endpoint_ratio"], floors["c1_endpoint_ratio"])}
    return combine(*parts.values()), parts


def _c1_row(stats: Mapping[str, Any] | None, kind: str, name: str, floors: Mapping[str, float],
            configuration: str | None) -> Row:
    row = Row(name, kind, C1_TITLE, C1_STAT, C1_PAPER,
              floor=f"stable and unstable ≥ {floors['c1_share']:.0%} of live latents; ratio ≥ "
                    f"{floors['c1_endpoint_ratio']:g}", configuration=configuration)
    if stats is None:
        return _missing(row, "no census")
    verdict, parts = c1_rule(stats, floors)
    row.baselines = {"homogeneous_endpoint": _brief(stats["homogeneous_endpoint"])}
    return _set(row, stats["endpoint_ratio"], verdict, parts=parts,
                stable=_brief(stats["stable"]), unstable=_brief(stats["unstable"]),
                endpoint=_brief(stats["endpoint"]), mean_p_hat=_brief(stats["mean_p_hat"]),
                n_seeds=stats.get("n_seeds"))


def rows_c1(study: Study) -> list[Row]:
    f = study.floors
    c, r = study.main(), study.main("random")
    s = c.read("census", "summary.json") if c else None
    lv = (s or {}).get("seed_level") or {}
    rows = [_gate(_c1_row(lv.get("claim"), CLAIM, "C1", f, c.name if c else None), [c], study)]
    for key, label in (("null_homogeneous", "homogeneous p"),
                       ("null_random_decoders", "random decoders")):
        rows.append(_c1_row(lv.get(key), NULL, f"C1 null: {label}", f, c.name if c else None))
    sr = r.read("census", "summary.json") if r else None
    rows.append(_gate(_c1_row(((sr or {}).get("seed_level") or {}).get("claim"), RANDOM,
                              "C1 random weights", f, r.name if r else None), [r], study))
    return rows


# ------------------------------------------------------------------------------------------
# C2: ReLU+L1 more stable, TopK more variance explained
# ------------------------------------------------------------------------------------------
C2_STAT = "stable share ReLU+L1 − TopK (live latents); EV TopK − ReLU+L1 beside it"
C2_PAPER = "ReLU+L1 is more stable but explains less variance than TopK"


def c2_rule(stable_diff: Mapping[str, Any], ev_diff: Mapping[str, Any],
            floors: Mapping[str, float]) -> tuple[str, dict[str, str]]:
    parts = {"stable": at_least(stable_diff, floors["c2_stable_difference"]),
             "ev": at_least(ev_diff, floors["c2_ev_difference"])}
    return combine(*parts.values()), parts


def _per_seed_mean(census: Mapping[str, Any], key: str,
                   idx: slice | None = None) -> dict[str, Any] | None:
    v = (census.get("per_seed") or {}).get(key)
    if v is None:
        return None
    return resampling.mean_of(np.asarray(v[idx] if idx is not None else v, dtype=float))


def rows_c2(study: Study) -> list[Row]:
    f = study.floors
    floor = (f"stable ≥ +{f['c2_stable_difference']:.0%} points and EV ≥ "
             f"+{f['c2_ev_difference']:g}")
    row = Row("C2", CLAIM, "ReLU+L1 vs TopK", C2_STAT, C2_PAPER, floor=floor)
    trained = [c for c in study.configs if c.weights == "trained"]
    relu = next((c for c in trained if c.architecture == "relu"), None)
    topk = next((c for c in trained if c.architecture == "topk"), None)
    sr = relu.read("census", "summary.json") if relu else None
    st = topk.read("census", "summary.json") if topk else None
    rows = []
    if sr is None or st is None:
        rows.append(_missing(row, "needs a trained ReLU+L1 and a trained TopK configuration"))
    else:
        stable = resampling.difference(sr["seed_level"]["claim"]["stable"],
                                       st["seed_level"]["claim"]["stable"])
        ev = resampling.difference(_per_seed_mean(st, "ev"), _per_seed_mean(sr, "ev"))
        verdict, parts = c2_rule(stable, ev, f)
        row.configuration = f"{relu.name} vs {topk.name}"
        _set(row, stable, verdict, parts=parts, ev_topk_minus_relu=_brief(ev),
             l0={"relu": sr["l0"]["mean"], "topk": st["l0"]["mean"]},
             stable={"relu": sr["seed_level"]["claim"]["stable"]["mean"],
                     "topk": st["seed_level"]["claim"]["stable"]["mean"]},
             ev={"relu": sr["ev"]["mean"], "topk": st["ev"]["mean"]})
        rows.append(_gate(row, [relu, topk], study))
    # known negative: one configuration against itself (two tables drawn from its own p̂
    # distribution; EV of two disjoint halves of its seeds)
    null = Row("C2 null: one configuration vs itself", NULL, "ReLU+L1 vs TopK", C2_STAT,
               C2_PAPER, floor=floor, configuration=topk.name if topk else None)
    lv = (st or {}).get("seed_level") or {}
    if st is None or "null_replica_a" not in lv:
        rows.append(_missing(null, "needs a trained TopK census"))
    else:
        n = len(st["per_seed"]["ev"])
        stable = resampling.difference(lv["null_replica_a"]["stable"],
                                       lv["null_replica_b"]["stable"])
        ev = resampling.difference(_per_seed_mean(st, "ev", slice(0, n // 2)),
                                   _per_seed_mean(st, "ev", slice(n // 2, n)))
        verdict, parts = c2_rule(stable, ev, f)
        rows.append(_set(null, stable, verdict, parts=parts, ev_difference=_brief(ev)))
    return rows


# ------------------------------------------------------------------------------------------
# C3: stable features carry most of the signal, at matched mass and at matched energy
# ------------------------------------------------------------------------------------------
C3_STAT = ("ΔEV(mask stable) / ΔEV(mask unstable set matched on activation mass), per anchor "
           "SAE; energy-matched sets and spliced ΔCE the same way")
C3_PAPER = "stable features carry most of the reconstruction and next-token signal"


def c3_rule(block: Mapping[str, Any], floors: Mapping[str, float]
            ) -> tuple[str, dict[str, str], Mapping[str, Any] | None]:
    """Every measured ratio (ΔEV and, where measured, ΔCE; mass- and energy-matched) passes
    :func:`ratio_rule`; the headline is the mass-matched ΔEV ratio."""
    parts = {}
    for matching in ("mass", "energy"):
        for metric in ("delta_ev", "delta_ce_err"):
            iv = ((block.get(matching) or {}).get(metric) or {}).get("ratio")
            if iv is not None:
                parts[f"{metric}_{matching}"] = ratio_rule(iv, floors["c3_ratio"])
    head = ((block.get("mass") or {}).get("delta_ev") or {}).get("ratio")
    return combine(*parts.values()), parts, head


def _c3_row(block: Mapping[str, Any] | None, kind: str, name: str, study: Study,
            c: Config | None) -> Row:
    f = study.floors
    row = Row(name, kind, "functional asymmetry", C3_STAT, C3_PAPER,
              floor=f"ratio ≥ {f['c3_ratio']:g} with lower bound > 1",
              configuration=c.name if c else None)
    if block is None:
        return _missing(row, "masking did not run (or wrote no seed-level block)")
    verdict, parts, head = c3_rule(block, f)
    ratios = {f"{m}_{k}": _brief(((block.get(m) or {}).get(k) or {}).get("ratio"))
              for m in ("mass", "energy") for k in ("delta_ev", "delta_ce_err")}
    return _set(row, head, verdict, parts=parts, ratios=ratios,
                n_anchors=len(block.get("anchors", [])))


def _claim_null_random(study: Study, cid: str, null_name: str, stage: str, file: str,
                       make_row: Callable[..., Row]) -> list[Row]:
    """The claim's row (main trained configuration), its known negative (the ``null`` entry of
    the same block) and the random-weights comparison, for a claim whose stage writes one block
    ``<cid lower-cased>`` per configuration."""
    key = cid.lower()
    c, r = study.main(), study.main("random")
    b = ((c.read(stage, file) if c else None) or {}).get(key)
    br = ((r.read(stage, file) if r else None) or {}).get(key)
    return [_gate(make_row(b, CLAIM, cid, study, c), [c], study),
            make_row((b or {}).get("null"), NULL, f"{cid} null: {null_name}", study, c),
            _gate(make_row(br, RANDOM, f"{cid} random weights", study, r), [r], study)]


def rows_c3(study: Study) -> list[Row]:
    return _claim_null_random(study, "C3", "sets of equal effect", "function",
                              "masking_summary.json", _c3_row)


# ------------------------------------------------------------------------------------------
# C4: unstable features are rarer and more surface-form
# ------------------------------------------------------------------------------------------
C4_STAT = ("median frequency unstable / stable; within-frequency-bin top-token share "
           "unstable − stable (per anchor SAE)")
C4_PAPER = "unstable features are low-frequency and dominated by single-token surface form"


def c4_rule(block: Mapping[str, Any], floors: Mapping[str, float]) -> tuple[str, dict[str, str]]:
    parts = {
        "low_frequency": at_most((block.get("frequency_ratio") or {}).get("interval"),
                                 floors["c4_frequency_ratio"]),
        "surface_form": at_least((block.get("binned_top_token_share_diff") or {})
                                 .get("interval"), floors["c4_share_difference"])}
    return combine(*parts.values()), parts


def _c4_row(block: Mapping[str, Any] | None, kind: str, name: str, study: Study,
            c: Config | None) -> Row:
    f = study.floors
    row = Row(name, kind, "character of unstable features", C4_STAT, C4_PAPER,
              floor=f"frequency ratio ≤ {f['c4_frequency_ratio']:g} and share difference ≥ "
                    f"{f['c4_share_difference']:g}", configuration=c.name if c else None)
    if block is None:
        return _missing(row, "surface statistics did not run (or wrote no seed-level block)")
    verdict, parts = c4_rule(block, f)
    share = (block.get("binned_top_token_share_diff") or {}).get("interval")
    ratio = (block.get("frequency_ratio") or {}).get("interval")
    return _set(row, ratio, verdict, parts=parts, top_token_share_difference=_brief(share))


def rows_c4(study: Study) -> list[Row]:
    rows = _claim_null_random(study, "C4", "shuffled labels", "function",
                              "surface_summary.json", _c4_row)
    c = study.main()
    ai = c.read("autointerp", "summary.json") if c else None
    if ai is not None:
        rows[0].details["autointerp"] = ai.get("difference")
    return rows


# ------------------------------------------------------------------------------------------
# C5: unstable features share a reproducible subspace
# ------------------------------------------------------------------------------------------
C5_STAT = ("share of seed b's unstable directions captured by seed a's unstable subspace, minus "
           "that of a covariance-matched random subspace of the same rank")
C5_PAPER = ("unstable features are not reproducible one by one but span a subspace that is")


def c5_rule(block: Mapping[str, Any], floors: Mapping[str, float]) -> tuple[str, dict[str, str]]:
    """Beats the covariance-matched random subspace by ``c5_margin`` and the within-seed
    baseline; PCA is reported beside, not decided on."""
    parts = {"beats_covariance": at_least(block.get("cross_minus_covariance"),
                                          floors["c5_margin"]),
             "beats_within_seed": at_least(block.get("cross_minus_within"), 0.0)}
    return combine(*parts.values()), parts


def _c5_row(block: Mapping[str, Any] | None, kind: str, name: str, study: Study,
            configuration: str | None) -> Row:
    f = study.floors
    row = Row(name, kind, "reproducible subspaces", C5_STAT, C5_PAPER,
              floor=f"≥ {f['c5_margin']:g} above the covariance-matched subspace, and above "
                    "the within-seed baseline", configuration=configuration)
    if block is None:
        return _missing(row, "the geometry stage did not run (or wrote no seed-level block)")
    verdict, parts = c5_rule(block, f)
    row.baselines = {k: _brief(block.get(k)) for k in ("covariance", "within", "pca", "random")}
    return _set(row, block.get("cross_minus_covariance"), verdict, parts=parts,
                cross=_brief(block.get("cross")),
                cross_minus_within=_brief(block.get("cross_minus_within")),
                cross_minus_pca=_brief(block.get("cross_minus_pca")),
                cross_minus_random=_brief(block.get("cross_minus_random")))


def rows_c5(study: Study) -> list[Row]:
    c, r = study.main(), study.main("random")
    b = ((c.read("geometry", "summary.json") if c else None) or {}).get("c5")
    br = ((r.read("geometry", "summary.json") if r else None) or {}).get("c5")
    rows = [_gate(_c5_row(b, CLAIM, "C5", study, c.name if c else None), [c], study)]
    nulls = [s for s in study.synthetic if s.get("null")]
    if not nulls:
        rows.append(_missing(Row("C5 null: isotropic Gaussian data", NULL,
                                 "reproducible subspaces", C5_STAT, C5_PAPER),
                             "no isotropic synthetic model in the config"))
    for s in nulls:
        f = Path(s["geometry"]) / "summary.json"
        block = json.loads(f.read_text()).get("c5") if f.is_file() else None
        rows.append(_c5_row(block, NULL, "C5 null: isotropic Gaussian data", study,
                            str(s["geometry"])))
    rows.append(_gate(_c5_row(br, RANDOM, "C5 random weights", study, r.name if r else None),
                      [r], study))
    return rows


# ------------------------------------------------------------------------------------------
# C6: the synthetic mechanism
# ------------------------------------------------------------------------------------------
C6_STAT = ("groups of rank ≥ 4: cross-seed overlap of the recovered subspaces, beside their "
           "latents' p̂ (and point features' p̂)")
C6_PAPER = ("SAEs recover low-rank subspaces across seeds but not their latents; point features "
            "stay stable")


def c6_rule(block: Mapping[str, Any], floors: Mapping[str, float],
            points: Mapping[str, Any] | None) -> tuple[str, dict[str, str]]:
    parts = {"subspace_recovered": at_least(block.get("overlap"), floors["c6_overlap"]),
             "latents_unstable": at_most(block.get("latent_p_hat"), floors["c6_group_p_hat"])}
    if points is not None:
        parts["points_stable"] = at_least(points, floors["c6_point_p_hat"])
    return combine(*parts.values()), parts


def rows_c6(study: Study) -> list[Row]:
    f = study.floors
    floor = (f"overlap ≥ {f['c6_overlap']:g}, latent p̂ ≤ {f['c6_group_p_hat']:g}, points p̂ ≥ "
             f"{f['c6_point_p_hat']:g}")
    row = Row("C6", CLAIM, "synthetic mechanism", C6_STAT, C6_PAPER, floor=floor)
    null = Row("C6 null: rank-1 groups", NULL, "synthetic mechanism", C6_STAT, C6_PAPER,
               floor=floor)
    blocks = []
    for s in study.synthetic:
        fp = Path(s["recovery"]) / "summary.json" if s.get("recovery") else None
        if fp is not None and fp.is_file() and not s.get("null"):
            blocks.append((s, json.loads(fp.read_text()).get("c6")))
    blocks = [(s, b) for s, b in blocks if b]
    if not blocks:
        return [_missing(row, "no synthetic model with planted groups"),
                _missing(null, "no synthetic model with planted groups")]
    s, b = blocks[0]
    row.configuration = null.configuration = str(s["recovery"])
    if b.get("groups") is None:
        _missing(row, "no group of rank >= 4 in the synthetic model")
    else:
        verdict, parts = c6_rule(b["groups"], f, b.get("points", {}).get("latent_p_hat"))
        _set(row, b["groups"]["overlap"], verdict, parts=parts,
             latent_p_hat=_brief(b["groups"]["latent_p_hat"]),
             points_p_hat=_brief(b.get("points", {}).get("latent_p_hat")),
             ranks=b["groups"].get("ranks"), by_rank=b.get("by_rank"))
        _gate(row, [synthetic_config(s)], study)
    if b.get("null_rank1") is None:
        _missing(null, "no rank-1 group in the synthetic model")
    else:
        verdict, parts = c6_rule(b["null_rank1"], f, None)
        _set(null, b["null_rank1"]["overlap"], verdict, parts=parts,
             latent_p_hat=_brief(b["null_rank1"]["latent_p_hat"]))
    return [row, null]


def synthetic_config(s: Mapping[str, Any]) -> Config:
    """A synthetic-model configuration as a :class:`Config` (for the gates)."""
    return Config(str(s.get("model", "synthetic")), "synthetic", str(s.get("hook", "")),
                  str(s.get("variant", "")), str(s.get("architecture", "")),
                  census=Path(s["census"]) if s.get("census") else None)


# ------------------------------------------------------------------------------------------
# C7: feature pools
# ------------------------------------------------------------------------------------------
C7_STAT = ("mutual stability of pools minus that of standard SAEs given the same extra "
           "training, over random disjoint seed splits; EV difference beside it")
C7_PAPER = "a pooled SAE is more stable at about the same explained variance"


def c7_rule(block: Mapping[str, Any], floors: Mapping[str, float]) -> tuple[str, dict[str, str]]:
    parts = {"more_stable": at_least(block.get("stability_difference"),
                                     floors["c7_stability_difference"]),
             "same_ev": at_least(block.get("ev_difference"), -floors["c7_ev_tolerance"])}
    return combine(*parts.values()), parts


def _c7_row(block: Mapping[str, Any] | None, kind: str, name: str, study: Study,
            c: Config | None) -> Row:
    f = study.floors
    row = Row(name, kind, "feature pool", C7_STAT, C7_PAPER,
              floor=f"stability ≥ +{f['c7_stability_difference']:g}, EV ≥ "
                    f"−{f['c7_ev_tolerance']:g}", configuration=c.name if c else None)
    if block is None:
        return _missing(row, "the feature pool did not run (or wrote no seed-level block)")
    verdict, parts = c7_rule(block, f)
    row.baselines = {"standard_continued": block.get("baseline")}
    return _set(row, block.get("stability_difference"), verdict, parts=parts,
                ev_difference=_brief(block.get("ev_difference")),
                n_splits=block.get("n_splits"))


def rows_c7(study: Study) -> list[Row]:
    return _claim_null_random(study, "C7", "continued standard vs itself", "pool",
                              "summary.json", _c7_row)


# ------------------------------------------------------------------------------------------
# the dead-salmon control
# ------------------------------------------------------------------------------------------
CTRL_STAT = "stable share of live latents, trained minus random weights (same SAE recipe)"
CTRL_PAPER = "the stability metric tells a trained model from a randomly initialised one"


def rows_control(study: Study) -> list[Row]:
    f = study.floors
    floor = f"≥ +{f['control_difference']:.0%} points"
    t = study.main("trained")
    r = study.twin(t, "random")
    st = t.read("census", "summary.json") if t else None
    sr = r.read("census", "summary.json") if r else None
    row = Row("control", CLAIM, "dead salmon", CTRL_STAT, CTRL_PAPER, floor=floor,
              configuration=f"{t.name} vs {r.name}" if t and r else None)
    rows = []
    if st is None or sr is None:
        rows.append(_missing(row, "needs the same configuration on trained and random weights"))
    else:
        diff = resampling.difference(st["seed_level"]["claim"]["stable"],
                                     sr["seed_level"]["claim"]["stable"])
        _set(row, diff, at_least(diff, f["control_difference"]),
             stable={"trained": st["seed_level"]["claim"]["stable"]["mean"],
                     "random": sr["seed_level"]["claim"]["stable"]["mean"]},
             ev={"trained": st["ev"]["mean"], "random": sr["ev"]["mean"]},
             train_ev={"trained": (st.get("train_ev") or {}).get("mean"),
                       "random": (sr.get("train_ev") or {}).get("mean")})
        rows.append(_gate(row, [t, r], study))
    null = Row("control null: one configuration vs itself", NULL, "dead salmon", CTRL_STAT,
               CTRL_PAPER, floor=floor, configuration=t.name if t else None)
    lv = (st or {}).get("seed_level") or {}
    if "null_replica_a" not in lv:
        rows.append(_missing(null, "needs a trained census"))
    else:
        diff = resampling.difference(lv["null_replica_a"]["stable"],
                                     lv["null_replica_b"]["stable"])
        rows.append(_set(null, diff, at_least(diff, f["control_difference"])))
    return rows


SECTIONS: list[Callable[[Study], list[Row]]] = [rows_c1, rows_c2, rows_c3, rows_c4, rows_c5,
                                                 rows_c6, rows_c7, rows_control]


def build(study: Study) -> list[Row]:
    """Every row, claim by claim (each claim, then its known negatives and its random-weights
    comparison)."""
    rows = [r for section in SECTIONS for r in section(study)]
    _note_not_specific(rows)
    return rows


def _note_not_specific(rows: list[Row]) -> None:
    """Where a claim's rule passes on random weights too, say so on the claim's row."""
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.kind == RANDOM and r.rule_verdict == REPRODUCED:
            claim = by_id.get(r.id.split(" ")[0])
            if claim is not None:
                claim.details["specific_to_trained"] = (
                    "no: the rule also passes on the random-weights configuration")


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------
def _num(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _interval_text(r: Row) -> str:
    if r.value is None:
        return "–"
    return f"{_num(r.value)} [{_num(r.ci_low)}, {_num(r.ci_high)}]"


def _status(r: Row) -> str:
    conv = [v.get("status", "unknown") for v in r.convergence.values()]
    health = [v.get("status", "unknown") for v in r.health.values()]
    if not conv and not health:
        return "–"
    return f"{', '.join(sorted(set(health)))}; {', '.join(sorted(set(conv)))}"


def compute_time(benchmarks: Sequence[str | Path]) -> dict[str, Any]:
    """Wall seconds of the jobs that keep a Snakemake benchmark record, summed per rule.

    ``benchmarks/<model>/<weights>/<hook>/<rule>/<name>.tsv`` or ``.../<hook>/<rule>.tsv``; the
    first column (``s``) of every row is summed (a benchmarked rule may repeat its run).
    """
    per_rule: dict[str, float] = {}
    for f in map(Path, benchmarks):
        rel = f.parts[f.parts.index("benchmarks") + 4:] if "benchmarks" in f.parts else f.parts
        rule = Path(rel[0]).stem if rel else f.stem
        try:
            table = pd.read_csv(f, sep="\t")
        except (OSError, ValueError) as err:
            raise io.InputError(f"{f}: unreadable Snakemake benchmark record ({err}); delete it "
                                f"and rerun the job that writes it") from err
        per_rule[rule] = per_rule.get(rule, 0.0) + float(table.iloc[:, 0].sum())
    return {"total_seconds": sum(per_rule.values()), "n_jobs": len(benchmarks),
            "per_rule_seconds": dict(sorted(per_rule.items(), key=lambda kv: -kv[1]))}


def l0_text(r: Row) -> str:
    """The L0 of each configuration a row compares, with its recipe's target where it has one
    (``k`` of the TopK family, ``target_l0`` of relu/jumprelu)."""
    if not r.l0:
        return "–"
    parts = []
    for e in r.l0:
        target = f" (target {_num(e['target_l0'])})" if e.get("target_l0") is not None else ""
        parts.append(f"{e['variant']} on {e['weights']}: {_num(e['l0'])}{target}")
    return "; ".join(parts)


def data_splits(study: Study) -> dict[str, Any]:
    """Per model: documents and tokens of the train and eval splits (``tokens/split.json``)."""
    out: dict[str, Any] = {}
    for model, d in study.tokens.items():
        f = Path(d) / "split.json"
        if not f.is_file():
            continue
        js = json.loads(f.read_text())
        out[model] = {split: {k: js[split].get(k) for k in
                              ("n_documents", "n_documents_used", "n_text_tokens", "n_contexts")}
                      for split in ("train", "eval") if split in js}
    return out


def compute_line(compute: dict[str, Any]) -> str:
    """``"T s of job time over N benchmarked jobs (rule s, ...)"`` from a summary's
    ``compute`` record (the README's line says the same)."""
    parts = ", ".join(f"{rule} {sec:,.0f} s" for rule, sec in compute["per_rule_seconds"].items())
    return (f"{compute['total_seconds']:,.0f} s of job time over {compute['n_jobs']} benchmarked "
            f"jobs ({parts})")


def to_markdown(rows: Sequence[Row], title: str = "Summary of the study",
                data: Mapping[str, Any] | None = None,
                compute: Mapping[str, Any] | None = None) -> str:
    lines = [
        f"# {title}", "",
        "Generated from this run's outputs by `saestab.summary`. Intervals are 95% and come from "
        "resampling SAEs (leave-one-seed-out jackknife; anchors of one configuration are not "
        "independent). A row is *reproduced* when its interval clears the floor, *not "
        "reproduced* when it lies on the other side, *inconclusive* when it straddles the floor "
        "or a gate fails (unhealthy or not converged SAEs). `null` rows are known negatives "
        "pushed through the same rule: they must read *not reproduced*. `random-weights` rows "
        "are the dead-salmon comparison.", "",
        "| row | kind | statistic [95% CI] | L0 (eval) | floor | rule | verdict | "
        "health; convergence |",
        "|---|---|---|---|---|---|---|---|"]
    data_lines = [f"- `{model}`: " + "; ".join(
        f"{split} split {v.get('n_text_tokens')} tokens in {v.get('n_contexts')} contexts from "
        f"{v.get('n_documents_used')} documents" for split, v in splits.items())
        for model, splits in (data or {}).items()]
    if compute:
        lines[2:2] = [f"Compute: {compute_line(compute)}; from `benchmarks/`, this run's "
                      "machine.", ""]
    if data_lines:
        lines[2:2] = ["Data:", *data_lines, ""]
    for r in rows:
        verdict = r.verdict if r.reason is None else f"{r.verdict} ({r.reason})"
        lines.append(f"| **{r.id}** {r.title if r.kind == CLAIM else ''} | {r.kind} | "
                     f"{_interval_text(r)} | {l0_text(r)} | {r.floor or '–'} | "
                     f"{r.rule_verdict or '–'} | {verdict} | {_status(r)} |")
    lines += ["", "## What each claim's statistic is", ""]
    for r in rows:
        if r.kind == CLAIM:
            lines.append(f"- **{r.id}** ({r.title}): {r.statistic}. Paper: {r.paper}.")
    lines += ["", "## Parts of each rule and baselines", ""]
    for r in rows:
        parts = r.details.get("parts") or {}
        bits = [f"{k.replace('_', ' ')}: {v}" for k, v in parts.items()]
        bits += [f"{k.replace('_', ' ')} {_iv(v)}" for k, v in r.baselines.items() if v]
        if r.details.get("specific_to_trained"):
            bits.append(f"specific to trained weights: {r.details['specific_to_trained']}")
        if r.configuration:
            bits.append(f"read from `{r.configuration}`")
        if bits:
            lines.append(f"- {r.id}: " + "; ".join(bits))
    return "\n".join(lines) + "\n"


def _iv(v: Any) -> str:
    if isinstance(v, Mapping) and "mean" in v:
        return f"{_num(v['mean'])} [{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]"
    return str(v)


def to_json(rows: Sequence[Row], data: Mapping[str, Any] | None = None,
            compute: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"rows": [asdict(r) for r in rows], "data": dict(data or {}),
            "compute": dict(compute or {})}
