"""The claim-by-claim summary: verdicts follow planted results, and absent stages are 'not run'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saestab import summary
from saestab.summary import NOT_REPRODUCED, NOT_RUN, REPRODUCED


def mci(mean: float, std: float = 0.01, n: int = 6) -> dict:
    half = 2.57 * std / n**0.5
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def census(stable: float, unstable: float, ev: float) -> dict:
    return {"n_seeds": 6, "stable": mci(stable), "unstable": mci(unstable),
            "middle": mci(1 - stable - unstable), "ev": mci(ev, 0.001)}


def masking(diff: float, ce_diff: float) -> dict:
    return {"stable_vs_unstable_matched": {
        "delta_ev": {"difference": mci(diff, 0.005, 3), "ratio": mci(2.0, 0.1, 3)},
        "delta_ce_err": {"difference": mci(ce_diff, 0.005, 3), "ratio": mci(2.0, 0.1, 3)}},
        "matched": {"count_ratio": mci(3.0, 0.2, 3)}}


def pool(stab_pool: float, ev_pool: float) -> dict:
    return {"mutual_stability": {"pool_after": mci(stab_pool, 0.005, 2),
                                 "standard": mci(0.42, 0.01, 18)},
            "ev": {"pool_after": mci(ev_pool, 0.0003, 2), "standard": mci(0.777, 0.001, 6),
                   "pool_before": mci(0.57, 0.01, 2)}, "post_train_tokens": 1000}


def surface(share_diff: float, freq_ratio: float) -> dict:
    return {"binned_diff_top_token_share": mci(share_diff, 0.01), "frequency_ratio":
            mci(freq_ratio, 0.02), "single_token_stable": mci(0.2), "single_token_unstable":
            mci(0.4)}


@pytest.fixture()
def study(tmp_path: Path):
    def make(*, stable_topk=0.2, stable_relu=0.5, ev_topk=0.78, ev_relu=0.71, stable_random=0.0,
             mask_diff=0.02, ce_diff=0.01, share_diff=0.1, freq_ratio=0.5, with_function=True,
             stab_pool=0.6, ev_pool=0.776):
        cfgs = []
        for weights, variant, arch, st, ev in (
                ("trained", "topk", "topk", stable_topk, ev_topk),
                ("trained", "relu", "relu", stable_relu, ev_relu),
                ("random", "topk", "topk", stable_random, 0.44)):
            base = tmp_path / weights / variant
            write(base / "stability" / "summary.json", census(st, 0.4 - st / 4, ev))
            c = summary.Config("m", weights, "h", variant, arch, census=base / "stability")
            if with_function:
                write(base / "function" / "masking_summary.json", masking(mask_diff, ce_diff))
                write(base / "function" / "surface_summary.json", surface(share_diff, freq_ratio))
                c.function = base / "function"
                write(base / "pool" / "summary.json", pool(stab_pool, ev_pool))
                c.pool = base / "pool"
            cfgs.append(c)
        return summary.Study(cfgs)

    return make


def verdicts(study: summary.Study) -> dict[str, str]:
    return {c.id: c.verdict for c in summary.build(study)}


def test_verdicts_follow_planted_results(study) -> None:
    v = verdicts(study())
    assert v == {"C1": REPRODUCED, "C2": REPRODUCED, "C3": REPRODUCED, "C4": REPRODUCED,
                 "C5": NOT_RUN, "C6": NOT_RUN, "C7": REPRODUCED, "control": REPRODUCED}
    assert verdicts(study(stab_pool=0.40))["C7"] == NOT_REPRODUCED
    assert verdicts(study(ev_pool=0.70))["C7"] == NOT_REPRODUCED  # more stable, but loses EV
    # each planted reversal flips its own claim, and only that one
    assert verdicts(study(mask_diff=-0.02))["C3"] == NOT_REPRODUCED
    assert verdicts(study(ce_diff=-0.02))["C3"] == NOT_REPRODUCED
    assert verdicts(study(share_diff=-0.1))["C4"] == NOT_REPRODUCED
    assert verdicts(study(freq_ratio=1.5))["C4"] == NOT_REPRODUCED
    assert verdicts(study(stable_relu=0.1))["C2"] == NOT_REPRODUCED
    assert verdicts(study(ev_relu=0.9))["C2"] == NOT_REPRODUCED
    assert verdicts(study(stable_random=0.3))["control"] == NOT_REPRODUCED
    flipped = verdicts(study(stable_random=0.3))
    assert flipped["C1"] == flipped["C3"] == REPRODUCED
    # an interval that straddles zero is not a reproduction
    assert verdicts(study(mask_diff=0.001))["C3"] == NOT_REPRODUCED


def test_absent_stages_are_not_run(study, tmp_path: Path) -> None:
    claims = {c.id: c for c in summary.build(study(with_function=False))}
    assert claims["C3"].verdict == claims["C4"].verdict == claims["C7"].verdict == NOT_RUN
    assert claims["C3"].reason and claims["C1"].verdict == REPRODUCED
    md = summary.to_markdown(list(claims.values()))
    assert "| **C3** functional asymmetry |" in md and "not run (masking did not run)" in md
    js = summary.to_json(list(claims.values()))
    assert [c["id"] for c in js["claims"]][:2] == ["C1", "C2"]
    json.dumps(js)  # serialisable


def test_welch_difference() -> None:
    d = summary.welch_difference({"mean": 1.0, "std": 0.0, "n": 3}, {"mean": 0.5, "std": 0.0,
                                                                      "n": 3})
    assert d == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5}
    d = summary.welch_difference(mci(1.0, 0.1, 6), mci(0.9, 0.1, 6))
    assert d["ci_low"] < 0.1 < d["ci_high"] and d["ci_low"] < 0  # too noisy to tell apart


def test_geometry_and_synthetic_claims(study, tmp_path: Path) -> None:
    st = study()
    main = st.main()
    assert main.variant == "topk" and main.weights == "trained"
    con = {"cross_minus_random": mci(0.38, 0.01, 30), "cross_minus_within": mci(0.05),
           "cross_minus_pca": mci(0.0)}
    geo = {"transfer": {"directions": {"contrasts": con, **{k: mci(0.5) for k in
                                                            ("cross", "within", "random", "pca")}},
                        "activations": {"contrasts": con}},
           "ranks": {"random": {"energy_rank_over_n": mci(0.6)},
                     "unstable": {"energy_rank_over_n": mci(0.38)}},
           "angles": {"cross": {"median_deg": 20.0}, "random": {"median_deg": 60.0}}}
    write(tmp_path / "geo" / "summary.json", geo)
    main.geometry = tmp_path / "geo"
    rows = [{"kind": "point", "rank": 1, "latent_p_hat": 1.0, "cross_seed_overlap": 0.99,
             "truth_overlap": 0.99, "best_cosine": 0.99},
            {"kind": "group", "rank": 8, "latent_p_hat": 0.2, "cross_seed_overlap": 0.99,
             "truth_overlap": 0.99, "best_cosine": 0.6}]
    write(tmp_path / "syn" / "summary.json", {"by_rank": rows})
    st.synthetic = [{"recovery": tmp_path / "syn"}]
    v = verdicts(st)
    assert v["C5"] == REPRODUCED and v["C6"] == REPRODUCED
    # subspaces no better than random: C5 fails; a latent as stable as its subspace: C6 fails
    con["cross_minus_random"] = mci(0.0, 0.01, 30)
    write(tmp_path / "geo" / "summary.json", geo)
    rows[1]["latent_p_hat"] = 1.0
    rows[1]["cross_seed_overlap"] = 0.5
    write(tmp_path / "syn" / "summary.json", {"by_rank": rows})
    v = verdicts(st)
    assert v["C5"] == NOT_REPRODUCED and v["C6"] == NOT_REPRODUCED
    # a study without a synthetic model does not run C6
    st.synthetic = []
    assert verdicts(st)["C6"] == NOT_RUN
