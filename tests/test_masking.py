"""Masking feature sets: explained variance, spliced next-token loss, mass-matched sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from saestab import masking
from saestab.activations import ActivationCache
from saestab.evaluation import evaluate_sae
from saestab.sae import SAEConfig, sae_from_tensors, save_sae

from .test_evaluation import make_cache


def random_sae(d: int, m: int, seed: int = 0, arch: str = "relu", k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, m, generator=g) / d**0.5
    cfg = SAEConfig(architecture=arch, d_in=d, d_sae=m, k=k)
    return sae_from_tensors(cfg, {"W_enc": w, "W_dec": w.T.contiguous(),
                                  "b_enc": torch.zeros(m) - 0.1,
                                  "b_dec": torch.randn(d, generator=g) * 0.1})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    return make_cache(tmp_path_factory.mktemp("mask") / "cache", d=16)


def test_mass_matching_hits_target_within_5_percent() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        mass = rng.lognormal(0, 1.5, size=400)
        cand = rng.choice(400, size=300, replace=False)
        target = float(mass[cand].sum()) * rng.uniform(0.1, 0.8)
        chosen = masking.mass_matched_subset(cand, mass, target, rng)
        assert set(chosen) <= set(cand) and len(set(chosen)) == len(chosen)
        assert abs(mass[chosen].sum() - target) / target < 0.05, trial


def test_masking_sets_match_mass_and_counts() -> None:
    rng = np.random.default_rng(1)
    m = 600
    labels = np.array(["stable"] * 100 + ["middle"] * 100 + ["unstable"] * 400)
    mass = np.r_[rng.uniform(8, 12, 100), rng.uniform(1, 5, 100), rng.uniform(2, 4, 400)]
    fs = masking.masking_sets(labels, mass, rng)
    s = fs.sets
    np.testing.assert_array_equal(s["stable"], np.arange(100))
    np.testing.assert_array_equal(s["stable_matched"], s["stable"])  # unstable mass is larger
    assert set(s["unstable_matched"]) <= set(range(200, 600))
    assert fs.info["mass_match_error"] < 0.05
    # a stable feature carries ~10/3 the mass of an unstable one: ~3.3x as many are needed
    assert 2.9 < fs.info["count_ratio"] < 3.8
    assert s["random_n_stable"].size == 100 and s["random_n_unstable"].size == \
        s["unstable_matched"].size
    assert s["random_n_unstable"].max() < m
    # when the unstable features carry less mass, the stable side is drawn down instead
    fs2 = masking.masking_sets(labels, np.r_[mass[:100] * 5, mass[100:]], rng)
    assert fs2.info["matched_side"] == "stable"
    np.testing.assert_array_equal(fs2.sets["unstable_matched"], np.arange(200, 600))
    assert fs2.sets["stable_matched"].size < 100 and fs2.info["mass_match_error"] < 0.05


def test_masked_ev_nothing_everything_and_one_feature(cache: ActivationCache) -> None:
    sae = random_sae(16, 48, seed=3)
    x = torch.from_numpy(cache.load())
    ev = masking.masked_ev(sae, cache, {"empty": np.array([], dtype=int), "one": np.array([5]),
                                         "every": np.arange(48)}, batch_size=64)
    assert ev["none"] == pytest.approx(evaluate_sae(sae, cache)["ev"], abs=1e-6)
    assert ev["empty"] == ev["none"]  # masking nothing changes nothing
    # masking everything leaves b_dec: the zero-reconstruction EV
    centred = ((x.double() - x.double().mean(0)) ** 2).sum()
    ev_zero = 1 - float(((x.double() - sae.b_dec.detach().double()) ** 2).sum() / centred)
    assert ev["all"] == pytest.approx(ev_zero, abs=1e-6)  # float32 sums
    assert ev["every"] == pytest.approx(ev_zero, abs=1e-6)
    # one feature masked equals zeroing it by hand before decoding
    with torch.no_grad():
        f = sae.encode(x)
        f[:, 5] = 0
        x_hat = sae.decode(f).double()
    assert ev["one"] == pytest.approx(1 - float(((x.double() - x_hat) ** 2).sum() / centred),
                                      abs=1e-6)
    assert ev["one"] != ev["none"]  # (a random SAE: masking may even help)


def test_topk_mask_does_not_reselect(cache: ActivationCache) -> None:
    sae = random_sae(16, 48, seed=4, arch="topk", k=4)
    x = torch.from_numpy(cache.load(0, 50))
    with torch.no_grad():
        f = sae.encode(x)
        j = int(f.abs().sum(0).argmax())
        idx = torch.tensor([j])
        x_hat = sae.decode(f)
        masked = masking._masked(f, x_hat, sae.W_dec, idx)
        f[:, j] = 0
        torch.testing.assert_close(masked, sae.decode(f), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def runners(tiny_model):
    return masking.bridge_runners(tiny_model.bridge, "blocks.1.hook_resid_post")


def test_spliced_loss_nothing_masked_with_error_is_clean(tiny_model, runners) -> None:
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 256, (6, 24))
    sae = random_sae(32, 64, seed=5)
    sets = {"some": np.arange(0, 64, 3), "all_features": np.arange(64)}
    df = masking.spliced_loss(*runners, sae, contexts, sets, batch_size=4)
    by = df.set_index(["set", "keep_error"])
    assert by.loc[("none", True), "delta_ce"] == pytest.approx(0.0, abs=1e-6)
    assert by.loc[("none", True), "kl"] == pytest.approx(0.0, abs=1e-6)
    # the clean CE is the model's own loss
    with torch.no_grad():
        logits = tiny_model.bridge(torch.from_numpy(contexts))
        logp = torch.log_softmax(logits[:, 1:-1].double(), -1)
        ce = -logp.gather(-1, torch.from_numpy(contexts[:, 2:]).unsqueeze(-1)).mean()
    assert by.loc[("none", True), "ce_clean"] == pytest.approx(float(ce), rel=1e-6)
    # a poor random SAE spliced in without its error term hurts; masking more hurts more
    assert by.loc[("none", False), "kl"] > 1e-3
    assert by.loc[("all_features", True), "kl"] > by.loc[("some", True), "kl"] > 0
    assert (df["n_predictions"] == 6 * 22).all()
    assert (df["n_patched"] == 6 * 23).all()  # BOS position left alone


def test_spliced_loss_leaves_outlier_positions_alone(runners) -> None:
    rng = np.random.default_rng(1)
    contexts = rng.integers(0, 256, (2, 16))
    sae = random_sae(32, 64, seed=6)
    df = masking.spliced_loss(*runners, sae, contexts, {}, outlier_threshold=0.0,
                              error_modes=(False,))
    # every position is above a zero threshold: nothing patched, the run stays clean
    assert int(df["n_patched"].iloc[0]) == 0
    assert df["kl"].iloc[0] == pytest.approx(0.0, abs=1e-9)


def test_run_masking_table_and_summary(tmp_path: Path, cache: ActivationCache) -> None:
    rng = np.random.default_rng(2)
    seeds = {}
    rows = []
    for s in range(3):
        sae = random_sae(16, 40, seed=10 + s)
        seeds[s] = save_sae(sae, tmp_path / f"seed{s}")
        labels = rng.choice(["stable", "middle", "unstable"], size=40, p=[0.3, 0.2, 0.5])
        mass = np.where(labels == "stable", 10.0, 1.0) * rng.uniform(0.5, 1.5, 40)
        rows.append(pd.DataFrame({"seed": s, "feature": np.arange(40), "label": labels,
                                  "activation_mass": mass}))
    table, summary = masking.run_masking(seeds, pd.concat(rows), cache, anchors=[0, 1, 2])
    assert len(table) == 3 * (len(masking.SET_ORDER) + 2)
    none = table[table["set"] == "none"]
    assert (none["delta_ev"] == 0).all()
    assert summary["sets"]["none"]["delta_ev"]["mean"] == 0
    assert summary["anchors"] == [0, 1, 2]
    assert summary["matched"]["mass_match_error_max"] < 0.25  # 40 features: coarse steps
    diff = summary["stable_vs_unstable_matched"]["delta_ev"]["difference"]
    assert diff["n"] == 3 and diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    with pytest.raises(Exception, match="anchor seed 7"):
        masking.run_masking(seeds, pd.concat(rows), cache, anchors=[7])
