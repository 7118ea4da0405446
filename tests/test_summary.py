"""The claim-by-claim summary: every verdict is a test that can fail.

Planted stage outputs are built with the same functions the stages use (the census's seed-level
statistics on planted match tables, the jackknife helpers for masking, surface, geometry,
recovery and pools), then each claim is flipped both ways, its known negatives must read
"not reproduced", and the health and convergence gates turn verdicts into "inconclusive".
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from saestab import census, io, pooling, resampling, subspaces, summary
from saestab.summary import CLAIM, INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, NULL, RANDOM, REPRODUCED

S, M, D = 6, 240, 16


def planted_maxcos(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S, S, m) best-match cosines in which feature i of every anchor reappears in each other
    seed independently with probability p[i] (cosine 0.9 when it does, 0.2 when not)."""
    hit = rng.random((S, S, len(p))) < p[None, None, :]
    return np.where(hit, 0.9, 0.2).astype(np.float16)


def profile(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "bimodal":  # 40% near-certain, 40% near-never, 20% in between
        return np.concatenate([np.full(96, 0.985), np.full(96, 0.005), rng.uniform(0.3, 0.7, 48)])
    if kind == "stable":  # ReLU-like: more stable
        return np.concatenate([np.full(168, 0.99), np.full(48, 0.005), rng.uniform(0.3, 0.7, 24)])
    if kind == "unstable":  # random-weights-like: nothing reappears
        return np.full(M, 0.003)
    if kind == "homogeneous":
        return np.full(M, 0.45)
    raise ValueError(kind)


def to_json(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=float))


@functools.cache  # the stage outputs are only read: share them across tests
def census_summary(kind: str, ev: float, *, seed: int = 0, dead: float = 0.01,
                   delta: float = 0.005, init_cos: float = 0.2, l0: float = 32.0,
                   target_l0: float | None = 32.0) -> dict:
    rng = np.random.default_rng(seed)
    maxcos = planted_maxcos(profile(kind, rng), rng)
    live = np.ones((S, M), dtype=bool)
    evs = ev + rng.normal(0, 0.002, S)
    s = {"n_seeds": S, "seed_level": census.seed_level(maxcos, live, D, 0.7, 0.05, seed=seed),
         "per_seed": {"ev": evs.tolist(), "l0": [l0] * S},
         "ev": {"mean": float(evs.mean())}, "l0": {"mean": l0}, "target_l0": target_l0,
         "dead_fraction_train": {"mean": dead}, "decoder_init_cosine": {"mean": init_cos},
         "train_ev": {"mean": ev}, "convergence": census.convergence(
             _training_length(0.2, 0.2 + delta))}
    return to_json(s)


def _training_length(a: float, b: float):
    import pandas as pd

    return pd.DataFrame({"epoch": [4, 8], "stable": [a, b]})


def c3_block(ratio: float, rng: np.random.Generator, n: int = 6) -> dict:
    def pair(r: float) -> dict:
        matched = rng.uniform(0.04, 0.06, n)
        stable = matched * r * rng.uniform(0.97, 1.03, n)
        return {"stable": stable.tolist(), "matched": matched.tolist(),
                "ratio": resampling.ratio_of_means(stable, matched)}

    block = {m: {"delta_ev": pair(ratio), "delta_ce_err": pair(ratio)} for m in ("mass", "energy")}
    block["null"] = {m: {"delta_ev": pair(1.0), "delta_ce_err": pair(1.0)}
                     for m in ("mass", "energy")}
    block["anchors"] = list(range(n))
    return block


def c4_block(freq_ratio: float, share_diff: float, rng: np.random.Generator) -> dict:
    def iv(mean: float, sd: float) -> dict:
        v = mean + rng.normal(0, sd, 6)
        return {"per_anchor": v.tolist(), "interval": resampling.mean_of(v)}

    return {"frequency_ratio": iv(freq_ratio, 0.03),
            "binned_top_token_share_diff": iv(share_diff, 0.01),
            "null": {"frequency_ratio": iv(1.0, 0.03),
                     "binned_top_token_share_diff": iv(0.0, 0.01)}}


def c5_block(cross: float, covariance: float, within: float, rng: np.random.Generator) -> dict:
    def mat(mean: float) -> np.ndarray:
        m = mean + rng.normal(0, 0.005, (S, S))
        np.fill_diagonal(m, np.nan)
        return m

    mats = {"cross": mat(cross), "covariance": mat(covariance), "within": mat(within),
            "pca": mat(cross), "random": mat(0.2)}
    block = {"cross": subspaces.pair_jackknife(mats["cross"])}
    for k in ("covariance", "within", "pca", "random"):
        block[k] = subspaces.pair_jackknife(mats[k])
        block[f"cross_minus_{k}"] = subspaces.pair_jackknife(mats["cross"] - mats[k])
    return block


def c6_block(overlap: float, group_p: float, point_p: float, rng: np.random.Generator) -> dict:
    def iv(mean: float) -> dict:
        return resampling.mean_of(np.clip(mean + rng.normal(0, 0.01, S), 0, 1))

    return {"groups": {"ranks": [4, 8, 16], "overlap": iv(overlap), "latent_p_hat": iv(group_p)},
            "points": {"latent_p_hat": iv(point_p)},
            "null_rank1": {"ranks": [1], "overlap": iv(0.999), "latent_p_hat": iv(0.98)}}


def c7_splits(stab_gain: float, ev_gain: float, rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(4):
        cont = 0.45 + rng.normal(0, 0.01)
        out.append({"mutual_stability_standard_continued": cont,
                    "mutual_stability_standard_continued_2": cont + rng.normal(0, 0.005),
                    "mutual_stability_pool_after": cont + stab_gain + rng.normal(0, 0.005),
                    "ev_standard_continued": 0.78, "ev_standard_continued_2":
                    0.78 + rng.normal(0, 0.0005), "ev_pool_after": 0.78 + ev_gain
                    + rng.normal(0, 0.0005)})
    return out


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(obj)))


PASSING = dict(topk="bimodal", relu="stable", random="unstable", ev_topk=0.78, ev_relu=0.71,
               c3=2.2, c4=(0.5, 0.1), c5=(0.6, 0.4, 0.5), c6=(0.97, 0.25, 0.99),
               c7=(0.08, 0.0), delta=0.005, dead=0.01, random_c1="unstable",
               relu_init_cos=0.2, l0_relu=32.0, target_relu=32.0)


@pytest.fixture()
def make_study(tmp_path: Path):
    def make(**over) -> summary.Study:
        p = {**PASSING, **over}
        rng = np.random.default_rng(1)
        cfgs = []
        for weights, variant, arch, kind, ev in (
                ("trained", "topk", "topk", p["topk"], p["ev_topk"]),
                ("trained", "relu", "relu", p["relu"], p["ev_relu"]),
                ("random", "topk", "topk", p["random"], 0.44)):
            base = tmp_path / weights / variant
            sparsity = ({"l0": p["l0_relu"], "target_l0": p["target_relu"]}
                        if variant == "relu" else {})
            write(base / "stability" / "summary.json",
                  census_summary(kind, ev, delta=p["delta"], dead=p["dead"],
                                 init_cos=p["relu_init_cos"] if variant == "relu" else 0.2,
                                 **sparsity))
            write(base / "function" / "masking_summary.json", {"c3": c3_block(
                p["c3"] if weights == "trained" else 1.0, rng)})
            write(base / "function" / "surface_summary.json", {"c4": c4_block(*(
                p["c4"] if weights == "trained" else (1.0, 0.0)), rng)})
            write(base / "geometry" / "summary.json", {"c5": c5_block(*p["c5"], rng)})
            write(base / "pool" / "summary.json", {"c7": pooling.c7_block(c7_splits(
                *(p["c7"] if weights == "trained" else (0.0, 0.0)), rng))})
            cfgs.append(summary.Config("m", weights, "h", variant, arch,
                                       census=base / "stability", function=base / "function",
                                       geometry=base / "geometry", pool=base / "pool"))
        syn = tmp_path / "synthetic"
        write(syn / "lowrank" / "census" / "summary.json", census_summary("bimodal", 0.9))
        write(syn / "lowrank" / "recovery" / "summary.json", {"c6": c6_block(*p["c6"], rng)})
        write(syn / "iso" / "census" / "summary.json", census_summary("unstable", 0.3))
        write(syn / "iso" / "geometry" / "summary.json", {"c5": c5_block(0.5, 0.5, 0.55, rng)})
        synthetic = [
            {"model": "lowrank", "hook": "x", "variant": "synth", "null": False,
             "census": syn / "lowrank" / "census", "recovery": syn / "lowrank" / "recovery",
             "geometry": syn / "lowrank" / "geometry"},
            {"model": "iso", "hook": "x", "variant": "synth", "null": True,
             "census": syn / "iso" / "census", "recovery": None,
             "geometry": syn / "iso" / "geometry"}]
        return summary.Study(cfgs, synthetic=synthetic)

    return make


def rows_by_id(study: summary.Study) -> dict[str, summary.Row]:
    return {r.id: r for r in summary.build(study)}


CLAIMS = ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "control"]


def test_planted_study_reproduces_and_every_null_fails(make_study) -> None:
    rows = rows_by_id(make_study())
    for cid in CLAIMS:
        assert rows[cid].verdict == REPRODUCED, (cid, rows[cid])
        assert rows[cid].ci_high > rows[cid].ci_low, cid  # non-degenerate: a real interval
    nulls = [r for r in rows.values() if r.kind == NULL]
    assert {r.id.split(" ")[0] for r in nulls} == set(CLAIMS)
    for r in nulls:
        assert r.verdict == NOT_REPRODUCED, (r.id, r)
    # the random-weights comparison is computed, not forced: C1 fails there (nothing stable)
    assert rows["C1 random weights"].kind == RANDOM
    assert rows["C1 random weights"].verdict == NOT_REPRODUCED


@pytest.mark.parametrize(("claim", "change"), [
    ("C1", {"topk": "unstable", "random": "unstable"}),  # all unstable: one population only
    ("C1", {"topk": "homogeneous"}),  # no separation beyond a homogeneous binomial
    ("C2", {"relu": "bimodal"}),  # ReLU no more stable than TopK
    ("C2", {"ev_relu": 0.80}),  # ReLU explains more variance
    ("C3", {"c3": 1.05}),  # a ratio that is not "most of the signal"
    ("C4", {"c4": (1.3, 0.1)}),  # unstable features more frequent
    ("C4", {"c4": (0.5, -0.1)}),  # unstable features less single-token
    ("C5", {"c5": (0.6, 0.6, 0.5)}),  # transfer equal to the covariance-matched baseline
    ("C5", {"c5": (0.6, 0.4, 0.7)}),  # within-seed subspace captures more
    ("C6", {"c6": (0.5, 0.25, 0.99)}),  # subspaces not recovered
    ("C6", {"c6": (0.97, 0.9, 0.99)}),  # group latents stable after all
    ("C7", {"c7": (0.0, 0.0)}),  # pool no more stable than the continued control
    ("C7", {"c7": (0.08, -0.05)}),  # pool loses EV
    ("control", {"random": "bimodal"}),  # random weights as stable as trained ones
])
def test_each_claim_flips_to_not_reproduced(make_study, claim: str, change: dict) -> None:
    rows = rows_by_id(make_study(**change))
    assert rows[claim].verdict == NOT_REPRODUCED, rows[claim]
    assert rows[claim].rule_verdict == NOT_REPRODUCED


def test_random_weights_passing_marks_claim_not_specific(make_study) -> None:
    rows = rows_by_id(make_study(random="bimodal"))
    assert rows["C1 random weights"].verdict == REPRODUCED
    assert "random-weights" in rows["C1"].details["specific_to_trained"]


def test_not_converged_is_inconclusive(make_study) -> None:
    rows = rows_by_id(make_study(delta=0.05))
    for cid in ("C1", "C3", "C5", "C7", "control"):
        assert rows[cid].verdict == INCONCLUSIVE, cid
        assert rows[cid].rule_verdict == REPRODUCED
        assert rows[cid].reason.startswith("not converged")
    assert all(r.verdict == NOT_REPRODUCED for r in rows.values() if r.kind == NULL)


def test_unhealthy_is_inconclusive(make_study) -> None:
    rows = rows_by_id(make_study(dead=0.3))
    assert rows["C1"].verdict == INCONCLUSIVE
    assert "unhealthy" in rows["C1"].reason and "30% dead" in rows["C1"].reason


def test_decoders_near_their_init_make_their_configuration_inconclusive(make_study) -> None:
    # the ReLU configuration alone is unhealthy: C2 (ReLU vs TopK) is gated, C1 (TopK) is not
    rows = rows_by_id(make_study(relu_init_cos=0.98))
    assert rows["C2"].verdict == INCONCLUSIVE and rows["C2"].rule_verdict == REPRODUCED
    assert rows["C2"].reason.startswith("unhealthy SAEs: relu on trained weights")
    assert "cosine 0.98 to their initialisation" in rows["C2"].reason
    assert rows["C1"].verdict == REPRODUCED
    assert rows["C2"].health["m trained h relu"]["status"] == "unhealthy"


def test_interval_straddling_the_floor_is_inconclusive() -> None:
    iv = {"mean": 0.05, "ci_low": 0.01, "ci_high": 0.09}
    assert summary.at_least(iv, 0.05) == INCONCLUSIVE
    assert summary.at_least(iv, 0.0) == REPRODUCED
    assert summary.at_least(iv, 0.1) == NOT_REPRODUCED
    assert summary.at_most(iv, 0.1) == REPRODUCED
    assert summary.at_most(iv, 0.0) == NOT_REPRODUCED
    assert summary.ratio_rule({"mean": 1.6, "ci_low": 0.9, "ci_high": 2.3}, 1.5) == INCONCLUSIVE
    assert summary.ratio_rule({"mean": 1.6, "ci_low": 1.1, "ci_high": 2.1}, 1.5) == REPRODUCED
    assert summary.ratio_rule({"mean": 1.1, "ci_low": 1.0, "ci_high": 1.2}, 1.5) == NOT_REPRODUCED
    assert summary.at_least({"mean": 1.0, "ci_low": float("nan"), "ci_high": 2.0}, 0.5) \
        == INCONCLUSIVE


def test_absent_stages_are_not_run(tmp_path: Path) -> None:
    study = summary.Study([summary.Config("m", "trained", "h", "topk", "topk")])
    rows = summary.build(study)
    assert all(r.verdict == NOT_RUN and r.reason for r in rows)


def test_markdown_and_json_rows(make_study) -> None:
    rows = summary.build(make_study())
    md = summary.to_markdown(rows)
    for r in rows:
        assert f"**{r.id}**" in md
    js = summary.to_json(rows)["rows"]
    assert {"id", "kind", "verdict", "value", "ci_low", "ci_high", "floor", "baselines",
            "convergence", "health"} <= set(js[0])
    assert {r["kind"] for r in js} == {CLAIM, NULL, RANDOM}


def test_l0_beside_every_stability_comparison(make_study) -> None:
    """Each row read from SAE configurations lists their L0 (and recipe target) in the JSON
    and in its summary.md line, so a C2 between a TopK at L0 32 and a ReLU at L0 5 shows."""
    rows = summary.build(make_study(l0_relu=5.0, target_relu=None))
    by_id = {r.id: r for r in rows}
    assert [(e["variant"], e["weights"], e["l0"], e["target_l0"]) for e in by_id["C2"].l0] == [
        ("relu", "trained", 5.0, None), ("topk", "trained", 32.0, 32.0)]
    assert [e["weights"] for e in by_id["control"].l0] == ["trained", "random"]
    for r in rows:  # every claim and random-weights row names its configurations' L0
        assert (len(r.l0) > 0) == (r.kind != NULL), r.id
    md = summary.to_markdown(rows).splitlines()
    c2 = next(line for line in md if line.startswith("| **C2**"))
    assert "| relu on trained: 5; topk on trained: 32 (target 32) |" in c2
    c1_null = next(line for line in md if line.startswith("| **C1 null: homogeneous p**"))
    assert c1_null.split(" | ")[3] == "–"
    assert summary.to_json(rows)["rows"][0]["l0"][0]["l0"] == 32.0


def test_census_nulls_fail_the_c1_rule_on_a_bimodal_configuration() -> None:
    rng = np.random.default_rng(3)
    maxcos = planted_maxcos(profile("bimodal", rng), rng)
    lv = census.seed_level(maxcos, np.ones((S, M), dtype=bool), D, 0.7, 0.05)
    floors = summary.FLOORS
    assert summary.c1_rule(lv["claim"], floors)[0] == REPRODUCED
    assert summary.c1_rule(lv["null_homogeneous"], floors)[0] == NOT_REPRODUCED
    assert summary.c1_rule(lv["null_random_decoders"], floors)[0] == NOT_REPRODUCED
    # the homogeneous null's endpoint mass is what the binomial predicts (ratio ~ 1)
    assert abs(lv["null_homogeneous"]["endpoint_ratio"]["mean"] - 1) < 0.15
    # jackknife intervals over seeds are real intervals, and wider than anchor t-intervals
    st = lv["claim"]["stable"]
    assert st["ci_high"] - st["ci_low"] > 0
    assert len(st["replicates"]) == S


def test_compute_time_sums_benchmark_records_per_rule(tmp_path: Path) -> None:
    head = "s\th:m:s\tmax_rss\n"
    files = {"benchmarks/m/trained/blocks.1.hook/train_saes/topk-group0.tsv": "100.5\t0\t1\n",
             "benchmarks/m/trained/blocks.1.hook/train_saes/relu-group0.tsv": "20\t0\t1\n3\t0\t1\n",
             "benchmarks/m/random/blocks.1.hook/cache_activations.tsv": "7.25\t0\t1\n"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(head + body)
    c = summary.compute_time([tmp_path / n for n in files])
    assert c["per_rule_seconds"] == {"train_saes": 123.5, "cache_activations": 7.25}
    assert c["total_seconds"] == 130.75 and c["n_jobs"] == 3
    md = summary.to_markdown([], compute=c)
    assert "Compute: 131 s of job time over 3 benchmarked jobs (train_saes 124 s, " \
           "cache_activations 7 s)" in md
    bad = tmp_path / "benchmarks/m/trained/blocks.1.hook/geometry/topk.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("")
    with pytest.raises(io.InputError, match="geometry/topk.tsv"):
        summary.compute_time([bad])
