"""Claim-by-claim summary of a study (``results/summary.{md,json}``), generated from its outputs.

For each claim of the paper (C1–C7) and the dead-salmon control: the headline statistic with its
95% interval, the paper's direction, and a verdict. A claim is **reproduced** when its statistic
points the paper's way with an interval that excludes the opposite (e.g. ΔEV(stable) −
ΔEV(mass-matched unstable) > 0 with the whole interval above 0), **not reproduced** when the
outputs exist but the interval does not, and **not run** when the outputs are absent (a stage
switched off, or a study without the configuration the claim needs). Nothing here is written by
hand: change a result and the verdict follows.

Inputs are the per-stage summary JSON files, passed as a :class:`Study` of configurations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
STAGES = ("census", "function", "geometry", "pool", "autointerp")


@dataclass
class Claim:
    """One row of the summary."""

    id: str
    title: str
    statistic: str  # what the headline number is
    paper: str  # the paper's direction, in words
    verdict: str = NOT_RUN
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    configuration: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why a claim was not run


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
    # synthetic-model configurations: {"census", "recovery", "geometry"} directories
    synthetic: list[dict[str, Path]] = field(default_factory=list)
    main_variant: str | None = None  # the configuration C1, C3–C5, C7 are read from

    def main(self, weights: str = "trained") -> Config | None:
        """The main configuration: ``main_variant`` (else the first TopK-family one, else the
        first) among those with the given weights."""
        cs = [c for c in self.configs if c.weights == weights]
        if self.main_variant is not None:
            cs = [c for c in cs if c.variant == self.main_variant]
        topk = [c for c in cs if c.architecture in ("topk", "batchtopk", "matryoshka")]
        return (topk or cs or [None])[0]


# ------------------------------------------------------------------------------------------
# intervals and verdicts
# ------------------------------------------------------------------------------------------
def welch_difference(a: Mapping[str, float], b: Mapping[str, float],
                     alpha: float = 0.05) -> dict[str, float]:
    """Difference of two means (``mean``, ``std``, ``n`` dicts, e.g. across anchors) with a
    Welch t-interval. With zero spread on both sides the interval collapses to the difference."""
    diff = a["mean"] - b["mean"]
    va = (a["std"] ** 2 / a["n"]) if a["n"] > 1 and np.isfinite(a["std"]) else 0.0
    vb = (b["std"] ** 2 / b["n"]) if b["n"] > 1 and np.isfinite(b["std"]) else 0.0
    se = float(np.sqrt(va + vb))
    if se == 0:
        return {"mean": diff, "ci_low": diff, "ci_high": diff}
    dof = (va + vb) ** 2 / ((va**2 / (a["n"] - 1) if va else 0) + (vb**2 / (b["n"] - 1)
                                                                 if vb else 0))
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    return {"mean": diff, "ci_low": diff - half, "ci_high": diff + half}


def directional(interval: Mapping[str, float], sign: int) -> str:
    """Reproduced when the interval lies entirely on the paper's side of zero (``sign`` +1: the
    statistic should be positive; -1: negative)."""
    lo, hi = interval.get("ci_low"), interval.get("ci_high")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return NOT_REPRODUCED
    return REPRODUCED if (lo > 0 if sign > 0 else hi < 0) else NOT_REPRODUCED


def _fill(claim: Claim, interval: Mapping[str, float], sign: int, config: Config | None,
          **details: Any) -> Claim:
    claim.value = float(interval["mean"])
    claim.ci_low = float(interval["ci_low"])
    claim.ci_high = float(interval["ci_high"])
    claim.verdict = directional(interval, sign)
    claim.configuration = config.name if config else None
    claim.details.update(details)
    return claim


def _all(*verdicts: str) -> str:
    return REPRODUCED if all(v == REPRODUCED for v in verdicts) else NOT_REPRODUCED


# ------------------------------------------------------------------------------------------
# the claims
# ------------------------------------------------------------------------------------------
def _main_output(study: Study, cl: Claim, stage: str, file: str,
                 reason: str) -> tuple[Config | None, dict[str, Any] | None]:
    """The main trained configuration and one of its stage outputs; when absent, the claim's
    ``reason`` says why (it then stays *not run*)."""
    c = study.main()
    s = c.read(stage, file) if c else None
    if s is None:
        cl.reason = reason
    return c, s


def claim_c1(study: Study) -> Claim:
    cl = Claim("C1", "stability signal",
               "share of features at the two ends of p̂ (stable + unstable) minus the share "
               "in between, mean over anchors", "p̂ is bimodal: most features are clearly "
               "stable or clearly unstable")
    c, s = _main_output(study, cl, "census", "summary.json",
                        "no census of a trained configuration")
    if s is None:
        return cl
    ends = {"mean": s["stable"]["mean"] + s["unstable"]["mean"],
            "std": np.hypot(s["stable"]["std"], s["unstable"]["std"]), "n": s["stable"]["n"]}
    return _fill(cl, welch_difference(ends, {**s["middle"], "n": s["middle"]["n"]}), +1, c,
                 stable=s["stable"]["mean"], unstable=s["unstable"]["mean"],
                 middle=s["middle"]["mean"], n_seeds=s["n_seeds"])


def claim_c2(study: Study) -> Claim:
    cl = Claim("C2", "ReLU+L1 vs TopK trade-off",
               "stable fraction of ReLU+L1 minus TopK (and EV of TopK minus ReLU+L1)",
               "ReLU+L1 is more stable but explains less variance than TopK")
    trained = [c for c in study.configs if c.weights == "trained"]
    relu = next((c for c in trained if c.architecture == "relu"), None)
    topk = next((c for c in trained if c.architecture == "topk"), None)
    sr = relu.read("census", "summary.json") if relu else None
    st = topk.read("census", "summary.json") if topk else None
    if sr is None or st is None:
        cl.reason = "needs a trained ReLU+L1 and a trained TopK configuration"
        return cl
    stable = welch_difference(sr["stable"], st["stable"])
    ev = welch_difference(st["ev"], sr["ev"])
    _fill(cl, stable, +1, topk, ev_topk_minus_relu=ev, relu=relu.name,
          stable_relu=sr["stable"]["mean"], stable_topk=st["stable"]["mean"],
          ev_relu=sr["ev"]["mean"], ev_topk=st["ev"]["mean"])
    cl.verdict = _all(directional(stable, +1), directional(ev, +1))
    return cl


def claim_c3(study: Study) -> Claim:
    cl = Claim("C3", "functional asymmetry",
               "ΔEV(mask stable) − ΔEV(mask mass-matched unstable), mean over anchors",
               "stable features carry most of the reconstruction and next-token signal, also "
               "at matched activation mass")
    c, s = _main_output(study, cl, "function", "masking_summary.json",
                        "masking did not run")
    if s is None:
        return cl
    con = s["stable_vs_unstable_matched"]
    _fill(cl, con["delta_ev"]["difference"], +1, c,
          delta_ev_ratio=con["delta_ev"]["ratio"]["mean"],
          count_ratio=s["matched"]["count_ratio"]["mean"],
          delta_ce_err=con.get("delta_ce_err", {}).get("difference"))
    ce = con.get("delta_ce_err", {}).get("difference")
    if ce is not None:
        cl.verdict = _all(cl.verdict, directional(ce, +1))
    return cl


def claim_c4(study: Study) -> Claim:
    cl = Claim("C4", "character of unstable features",
               "within-frequency-bin difference of top-token share (unstable − stable); "
               "median-frequency ratio unstable/stable beside it",
               "unstable features are low-frequency and dominated by single-token surface form")
    c, s = _main_output(study, cl, "function", "surface_summary.json",
                        "surface statistics did not run")
    if s is None:
        return cl
    share = s["binned_diff_top_token_share"]
    ratio = s["frequency_ratio"]
    _fill(cl, share, +1, c, frequency_ratio=ratio,
          single_token_stable=s["single_token_stable"]["mean"],
          single_token_unstable=s["single_token_unstable"]["mean"])
    low_freq = {"mean": ratio["mean"] - 1, "ci_low": ratio["ci_low"] - 1,
                "ci_high": ratio["ci_high"] - 1}
    cl.details["low_frequency"] = directional(low_freq, -1)
    cl.details["surface_form"] = directional(share, +1)
    ai = c.read("autointerp", "summary.json")
    if ai is not None:
        cl.details["autointerp"] = ai.get("difference")
    cl.verdict = _all(cl.details["low_frequency"], cl.details["surface_form"])
    return cl


def claim_c5(study: Study) -> Claim:
    cl = Claim("C5", "reproducible subspaces",
               "share of seed b's unstable decoder directions captured by seed a's unstable "
               "subspace minus that of a random subspace of the same rank (all seed pairs)",
               "unstable features are not reproducible one by one but span a lower-rank "
               "subspace that is")
    c, s = _main_output(study, cl, "geometry", "summary.json",
                        "the geometry stage did not run")
    if s is None:
        return cl
    con = s["transfer"]["directions"]["contrasts"]
    ranks = s["ranks"]
    lower = welch_difference(ranks["random"]["energy_rank_over_n"],
                             ranks["unstable"]["energy_rank_over_n"])
    _fill(cl, con["cross_minus_random"], +1, c,
          cross=s["transfer"]["directions"]["cross"]["mean"],
          within=s["transfer"]["directions"]["within"]["mean"],
          random=s["transfer"]["directions"]["random"]["mean"],
          pca=s["transfer"]["directions"]["pca"]["mean"],
          cross_minus_within=con["cross_minus_within"], cross_minus_pca=con["cross_minus_pca"],
          activation_cross_minus_random=s["transfer"]["activations"]["contrasts"][
              "cross_minus_random"],
          rank_over_n_random_minus_unstable=lower,
          angles_median_deg={"cross": s["angles"]["cross"]["median_deg"],
                             "random": s["angles"]["random"]["median_deg"]})
    cl.details["lower_rank"] = directional(lower, +1)
    cl.verdict = _all(cl.verdict, cl.details["lower_rank"])
    return cl


def claim_c6(study: Study, high_rank: int = 4, point_p_hat: float = 0.9) -> Claim:
    cl = Claim("C6", "synthetic mechanism",
               f"cross-seed subspace overlap minus per-latent p̂, groups of rank ≥ {high_rank} "
               "(interval: range over groups and synthetic models, not a CI)",
               "SAEs recover low-rank subspaces across seeds but not their individual latents; "
               "rank-1 features stay stable")
    rows = []
    for syn in study.synthetic:
        f = Path(syn["recovery"]) / "summary.json"
        if f.is_file():
            rows += json.loads(f.read_text())["by_rank"]
    if not rows:
        cl.reason = "no synthetic model"
        return cl
    high = [r for r in rows if r["kind"] == "group" and r["rank"] >= high_rank]
    points = [r for r in rows if r["kind"] == "point" or r["rank"] == 1]
    if not high:
        cl.reason = f"no group of rank >= {high_rank} in the synthetic model"
        return cl
    gap = np.array([r["cross_seed_overlap"] - r["latent_p_hat"] for r in high])
    _fill(cl, {"mean": float(gap.mean()), "ci_low": float(gap.min()),
               "ci_high": float(gap.max())}, +1, None,
          by_rank=[{k: r[k] for k in ("kind", "rank", "latent_p_hat", "cross_seed_overlap",
                                      "truth_overlap", "best_cosine")} for r in rows])
    points_ok = all(r["latent_p_hat"] >= point_p_hat for r in points)
    cl.details["rank1_stable"] = REPRODUCED if points_ok else NOT_REPRODUCED
    cl.verdict = _all(cl.verdict, cl.details["rank1_stable"])
    cl.configuration = ", ".join(str(Path(s["recovery"])) for s in study.synthetic)
    return cl


EV_TOLERANCE = 0.01  # "about the same explained variance": pool EV at most this much lower


def claim_c7(study: Study) -> Claim:
    cl = Claim("C7", "feature pool",
               "mutual stability of pools (built from disjoint seed subsets) minus that of "
               f"standard SAEs; EV of the post-trained pool minus standard beside it (must not "
               f"fall below -{EV_TOLERANCE})",
               "a pooled SAE is more stable at about the same explained variance")
    c, s = _main_output(study, cl, "pool", "summary.json",
                        "the feature pool did not run")
    if s is None:
        return cl
    ms, ev = s["mutual_stability"], s["ev"]
    stab = welch_difference(ms["pool_after"], ms["standard"])
    ev_diff = welch_difference(ev["pool_after"], ev["standard"])
    _fill(cl, stab, +1, c, ev_pool_minus_standard=ev_diff,
          ev_pool_before=ev["pool_before"]["mean"], ev_pool_after=ev["pool_after"]["mean"],
          ev_standard=ev["standard"]["mean"], stability_pool=ms["pool_after"]["mean"],
          stability_standard=ms["standard"]["mean"], post_train_tokens=s.get("post_train_tokens"))
    ev_ok = REPRODUCED if ev_diff["ci_low"] > -EV_TOLERANCE else NOT_REPRODUCED
    cl.details["same_ev"] = ev_ok
    cl.verdict = _all(cl.verdict, ev_ok)
    return cl


def claim_salmon(study: Study) -> Claim:
    cl = Claim("control", "dead salmon",
               "stable fraction, trained minus random weights (same SAE recipe)",
               "the stability metric tells a trained model from a randomly initialised one")
    t, r = study.main("trained"), None
    if t is not None:
        r = next((c for c in study.configs if c.weights == "random" and c.variant == t.variant
                  and c.model == t.model and c.hook == t.hook), None)
    st = t.read("census", "summary.json") if t else None
    sr = r.read("census", "summary.json") if r else None
    if st is None or sr is None:
        cl.reason = "needs the same configuration on trained and random weights"
        return cl
    return _fill(cl, welch_difference(st["stable"], sr["stable"]), +1, t,
                 stable_trained=st["stable"]["mean"], stable_random=sr["stable"]["mean"],
                 ev_trained=st["ev"]["mean"], ev_random=sr["ev"]["mean"])


CLAIMS: list[Callable[[Study], Claim]] = [claim_c1, claim_c2, claim_c3, claim_c4, claim_c5,
                                            claim_c6, claim_c7]
CONTROLS: list[Callable[[Study], Claim]] = [claim_salmon]


def build(study: Study, extra: Sequence[Callable[[Study], Claim]] = ()) -> list[Claim]:
    """Every claim's row, in order (C1 … C7, then the control)."""
    rows = [f(study) for f in [*CLAIMS, *extra]]
    rows.sort(key=lambda c: c.id)
    return rows + [f(study) for f in CONTROLS]


def _num(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def to_markdown(claims: Sequence[Claim], title: str = "Summary of the study") -> str:
    lines = [f"# {title}", "",
             "Generated from this run's outputs by `saestab.summary`; a claim is *reproduced* "
             "when its statistic points the paper's way with a 95% interval that excludes the "
             "opposite.", "",
             "| claim | statistic | value [95% CI] | paper's direction | verdict |",
             "|---|---|---|---|---|"]
    for c in claims:
        value = "–" if c.value is None else \
            f"{_num(c.value)} [{_num(c.ci_low)}, {_num(c.ci_high)}]"
        verdict = c.verdict if c.reason is None else f"{c.verdict} ({c.reason})"
        lines.append(f"| **{c.id}** {c.title} | {c.statistic} | {value} | {c.paper} | "
                     f"{verdict} |")
    lines.append("")
    for c in claims:
        parts = [f"read from `{c.configuration}`"] if c.configuration else []
        parts += [f"{k.replace('_', ' ')}: {v}" for k, v in c.details.items()
                  if v in (REPRODUCED, NOT_REPRODUCED)]
        if parts:
            lines.append(f"- {c.id}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def to_json(claims: Sequence[Claim]) -> dict[str, Any]:
    return {"claims": [asdict(c) for c in claims]}
