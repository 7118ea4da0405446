"""Activation statistics and surface-form measures on a cache with planted token features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from saestab import io, surface
from saestab.activations import ActivationCache, write_cache
from saestab.evaluation import read_scans, scan_sae, write_scans
from saestab.models import ByteTokenizer
from saestab.sae import SAEConfig, sae_from_tensors, save_sae

D = 8
TEXT = "The 3 old bridges, built in 1850, cross 2 rivers. Every day 47 boats pass; rarely 9! "


def planted_forward(ids: torch.Tensor) -> torch.Tensor:
    """dim 0 on '.', dim 1 on ' ', dim 2 on digits, dims 3-7 noise on every token."""
    code = torch.zeros(258, D)
    code[ord("."), 0] = 2.0
    code[ord(" "), 1] = 1.5
    for c in "0123456789":
        code[ord(c), 2] = 1.0 + int(c) / 10  # '9' strongest
    g = torch.Generator().manual_seed(int(ids.sum()))
    noise = torch.zeros(*ids.shape, D)
    noise[..., 3:] = torch.rand(*ids.shape, D - 3, generator=g)
    return code[ids] + noise


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    ids = np.frombuffer((TEXT * 40).encode(), dtype=np.uint8).astype(np.int64)
    t = 32
    contexts = np.concatenate([np.full((len(ids) // (t - 1), 1), 256),
                               ids[: len(ids) // (t - 1) * (t - 1)].reshape(-1, t - 1)], axis=1)
    return write_cache(tmp_path_factory.mktemp("surf") / "cache", planted_forward, contexts,
                       d=D, bos_token_id=256, outlier_factor=None)


def identity_relu() -> object:
    eye = torch.eye(D)
    cfg = SAEConfig(architecture="relu", d_in=D, d_sae=D)
    return sae_from_tensors(cfg, {"W_enc": eye, "W_dec": eye * 2.0, "b_enc": torch.zeros(D),
                                  "b_dec": torch.zeros(D)})


def test_scan_of_a_topk_sae_matches_its_dense_code(cache: ActivationCache) -> None:
    """The scan reads the sparse code (TopK selects its entries itself): its counts, sums, maxima
    and top rows are those of the dense code, across batch boundaries."""
    g = torch.Generator().manual_seed(0)
    m = 24
    cfg = SAEConfig(architecture="topk", d_in=D, d_sae=m, k=3)
    sae = sae_from_tensors(cfg, {"W_enc": torch.randn(D, m, generator=g),
                                 "W_dec": torch.randn(m, D, generator=g),
                                 "b_enc": torch.zeros(m), "b_dec": torch.zeros(D)})
    acts = scan_sae(sae, cache, top_k=5, batch_size=64)
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(cache.load())).numpy()
    np.testing.assert_array_equal(acts.count, (f > 0).sum(0))
    np.testing.assert_allclose(acts.total, f.sum(0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_array_equal(acts.max, f.max(0))
    for j in range(m):
        order = np.lexsort((np.arange(len(f)), -f[:, j]))[:5]
        fired = f[order, j] > 0
        np.testing.assert_array_equal(acts.top_values[:, j], np.where(fired, f[order, j], 0))
        np.testing.assert_array_equal(acts.top_rows[fired, j], order[fired])


def test_one_pass_over_several_saes_gives_each_its_own_scan(cache: ActivationCache) -> None:
    """scan_saes reads each batch once for all seeds; no sum, count or top row may leak from
    one SAE into another's, whatever their widths and architectures."""
    from dataclasses import fields

    from saestab.evaluation import scan_saes

    g = torch.Generator().manual_seed(1)
    cfg = SAEConfig(architecture="topk", d_in=D, d_sae=24, k=3)
    topk = sae_from_tensors(cfg, {"W_enc": torch.randn(D, 24, generator=g),
                                  "W_dec": torch.randn(24, D, generator=g),
                                  "b_enc": torch.zeros(24), "b_dec": torch.zeros(D)})
    saes = {4: topk, 9: identity_relu()}
    both = scan_saes(saes, cache, top_k=7, batch_size=50)
    assert sorted(both) == [4, 9]
    for seed, sae in saes.items():
        alone = scan_sae(sae, cache, top_k=7, batch_size=50)
        for f in fields(alone):
            np.testing.assert_array_equal(getattr(both[seed], f.name), getattr(alone, f.name),
                                          err_msg=f"seed {seed}: {f.name}")
    assert both[4].count.size == 24 and both[9].count.size == D


def test_scan_and_feature_table(cache: ActivationCache) -> None:
    sae = identity_relu()
    acts = scan_sae(sae, cache, top_k=16, batch_size=100)
    x = cache.load()
    np.testing.assert_array_equal(acts.count, (x > 0).sum(0))
    np.testing.assert_allclose(acts.max, x.max(0), rtol=1e-6)
    np.testing.assert_allclose(acts.mass, x.sum(0) * 2.0, rtol=1e-5)  # ||d_j|| = 2
    # the top rows hold the largest activations, in order
    for j in range(D):
        np.testing.assert_allclose(acts.top_values[:, j], np.sort(x[:, j])[::-1][:16], rtol=1e-6)
        # each top row holds its value; equal values (every '.' gives 2.0) go to the lower row
        np.testing.assert_allclose(x[acts.top_rows[:, j], j], acts.top_values[:, j], rtol=1e-6)
        order = np.lexsort((np.arange(len(x)), -x[:, j]))[:16]
        np.testing.assert_array_equal(acts.top_rows[:, j], order)
    tokens = surface.TokenInfo.build(ByteTokenizer(), cache.token_ids())
    t = surface.feature_table(acts, np.asarray(cache.token_ids()), tokens)
    dot, space, digit = t.iloc[0], t.iloc[1], t.iloc[2]
    assert dot.top_token == "." and dot.top_token_share == 1.0 and dot.token_entropy == 0.0
    assert dot.punct_share == 1.0 and dot.whitespace_share == 0.0 and dot.single_token
    assert space.whitespace_share == 1.0 and space.punct_share == 0.0 and space.single_token
    # the top 16 digit activations: all '9' (x 2 per repeat: "47" has no 9; "9!" one per text)
    assert digit.digit_share == 1.0 and digit.top_token == "9"
    assert dot.frequency == pytest.approx(np.mean(np.asarray(cache.token_ids()) == ord(".")))
    # a feature firing on many different bytes is not a single-token feature
    assert t.iloc[3:]["top_token_share"].max() < 0.5
    assert (t.iloc[3:]["token_entropy"] > 2).all()


def test_compare_labels_and_binned_difference() -> None:
    rng = np.random.default_rng(0)
    n = 400
    freq = 10 ** rng.uniform(-4, -1, n)
    label = np.where(rng.random(n) < 0.5, "stable", "unstable")
    # unstable features: higher top-token share at every frequency
    share = rng.uniform(0, 0.5, n) + np.where(label == "unstable", 0.4, 0.0)
    t = pd.DataFrame({"label": label, "frequency": freq, "top_token_share": share})
    comp = surface.compare_labels(t, metrics=["top_token_share", "frequency"], n_bins=4)
    overall = comp[(comp["bin"] == -1) & (comp["metric"] == "top_token_share")].iloc[0]
    assert overall["ks"] > 0.6 and overall["ks_p"] < 1e-10
    assert surface.binned_difference(comp, "top_token_share") == pytest.approx(0.4, abs=0.05)
    # frequency itself does not differ by label here
    assert comp[(comp["bin"] == -1) & (comp["metric"] == "frequency")].iloc[0]["ks_p"] > 0.01


def test_binned_profile_averages_anchors_and_gives_their_interval() -> None:
    """Three anchors whose unstable features sit at a share 0.2, 0.3, 0.4 in every bin and
    stable ones at 0.8: the profile is the mean over anchors with the interval of that mean."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, level in ((0, 0.2), (1, 0.3), (2, 0.4)):
        freq = 10 ** rng.uniform(-4, -1, 200)
        lab = np.where(np.arange(200) % 2 == 0, "stable", "unstable")
        share = np.where(lab == "stable", 0.8, level)
        rows.append(pd.DataFrame({"seed": seed, "label": lab, "frequency": freq,
                                  "top_token_share": share}))
    table = pd.concat(rows, ignore_index=True)
    prof = surface.binned_profile(table, "top_token_share", n_bins=4)
    un = prof[prof["label"] == "unstable"]
    assert list(un["bin"]) == [0, 1, 2, 3] and (un["n_anchors"] == 3).all()
    assert un["mean"].to_numpy() == pytest.approx(0.3)
    half = float(stats.t.ppf(0.975, 2)) * 0.1 / np.sqrt(3)  # t interval of (0.2, 0.3, 0.4)
    assert un["ci_high"].to_numpy() == pytest.approx(0.3 + half)
    st = prof[prof["label"] == "stable"]
    assert st["mean"].to_numpy() == pytest.approx(0.8) and st["ci_low"].to_numpy() == \
        pytest.approx(0.8)
    # the bin edges are shared by every anchor: centres come from the pooled frequencies
    _, edges = surface.frequency_bins(table["frequency"].to_numpy(), 4)
    assert un["log10_freq_centre"].to_numpy() == pytest.approx(0.5 * (edges[1:] + edges[:-1]))
    # an anchor with fewer than min_count features of a label in a bin does not count there
    thin = table[~((table["seed"] == 2) & (table["label"] == "unstable")
                   & (table["frequency"] > 10 ** -1.75))]
    last = surface.binned_profile(thin, "top_token_share", n_bins=4)
    last = last[(last["label"] == "unstable") & (last["bin"] == 3)].iloc[0]
    assert last["n_anchors"] == 2 and last["mean"] == pytest.approx(0.25)
    assert np.isnan(last["ci_low"])  # two anchors: no jackknife interval


def test_run_surface_contexts_and_browser(tmp_path: Path, cache: ActivationCache) -> None:
    seeds = {0: save_sae(identity_relu(), tmp_path / "seed0")}
    census = pd.DataFrame({"seed": 0, "feature": np.arange(D),
                           "label": ["unstable"] * 3 + ["stable"] * 4 + ["dead"],
                           "p_hat": [0.0] * 3 + [1.0] * 4 + [0.0]})
    res = surface.run_surface(seeds, census, cache, ByteTokenizer(), anchors=[0], top_k=16,
                              n_browse=2, n_contexts=3)
    # from a saved scan of the anchor (the workflow's scan_features), with more top rows kept
    path = write_scans({0: scan_sae(identity_relu(), cache, top_k=40)}, tmp_path / "scan.npz")
    again = surface.run_surface({}, census, cache, ByteTokenizer(), anchors=[0], top_k=16,
                                n_browse=2, n_contexts=3, scans=read_scans(path))
    pd.testing.assert_frame_equal(again.features, res.features)
    pd.testing.assert_frame_equal(again.contexts, res.contexts)
    with pytest.raises(io.InputError, match="fewer than top_k = 64"):
        surface.run_surface({}, census, cache, ByteTokenizer(), anchors=[0], top_k=64,
                            scans=read_scans(path))
    with pytest.raises(io.InputError, match="no feature scan for anchor seed 1"):
        surface.run_surface({}, census, cache, ByteTokenizer(), anchors=[1], scans={})
    assert len(res.features) == D
    assert set(res.features["label"]) == {"stable", "unstable", "dead"}
    assert res.features["live"].tolist() == [True] * 7 + [False]
    pa = res.summary["per_anchor"][0]
    assert (pa["n_stable"], pa["n_unstable"], pa["n_dead"]) == (4, 3, 1)
    assert res.summary["single_token_unstable"]["mean"] == 1.0  # '.', ' ', '9'
    assert res.summary["single_token_stable"]["mean"] == 0.0
    c4 = res.summary["c4"]
    assert c4["anchors"] == [0] and len(c4["null"]["frequency_ratio"]["per_anchor"]) == 1
    assert c4["frequency_ratio"]["per_anchor"] == [pa["frequency_ratio"]]
    assert "dead" not in set(res.contexts["label"])  # never browsed either
    ctx = res.contexts
    assert set(ctx.columns) >= {"anchor", "feature", "label", "p_hat", "frequency", "rank",
                                "activation", "token_id", "token", "left", "right"}
    assert ctx.groupby("feature").size().max() == 3 and ctx["feature"].nunique() == 4
    row = ctx[ctx["feature"] == 0].iloc[0]
    assert row.token == "." and row.left and TEXT.replace(" ", "").find(
        row.left.strip()[-3:].replace(" ", "")) >= 0
    html = surface.browser_html(ctx, res.features[res.features["feature"].isin(ctx["feature"])]
                                .assign(anchor=0), "test <browser>")
    assert "<mark>.</mark>" in html and "test &lt;browser&gt;" in html
    assert html.index("stable") < html.index("unstable")


def test_compare_labels_without_enough_features_is_empty_not_an_error() -> None:
    t = pd.DataFrame({"label": ["stable", "unstable", "unstable"], "frequency": [0.1, 0.2, 0.3],
                      "top_token_share": [0.1, 0.2, 0.3]})
    comp = surface.compare_labels(t, metrics=["top_token_share"])
    assert comp.empty and "metric" in comp.columns
    assert np.isnan(surface.binned_difference(comp, "top_token_share"))


def planted_anchor(rng: np.random.Generator, n: int = 600) -> pd.DataFrame:
    """One anchor's features: unstable ones ~10x rarer and, at equal frequency, 0.3 more
    single-token; plus dead features that would push both statistics the other way."""
    label = rng.choice(["stable", "unstable", "middle"], size=n, p=[0.4, 0.4, 0.2])
    logf = rng.uniform(-4, -1, n) - np.where(label == "unstable", 1.0, 0.0)
    share = rng.uniform(0.1, 0.5, n) + np.where(label == "unstable", 0.3, 0.0)
    live = pd.DataFrame({"label": label, "frequency": 10 ** logf, "top_token_share": share})
    dead = pd.DataFrame({"label": "dead", "frequency": np.zeros(50),
                         "top_token_share": np.zeros(50)})
    return pd.concat([live, dead], ignore_index=True)


def test_c4_statistics_flip_and_the_shuffled_null_sits_at_no_effect() -> None:
    rng = np.random.default_rng(0)
    tables = [planted_anchor(rng) for _ in range(6)]
    real, flipped, null = [], [], []
    for t in tables:
        live = t[surface.live_features(t)]
        assert (live["label"] != "dead").all() and len(live) == len(t) - 50
        real.append(surface.c4_statistics(live))
        swap = live.assign(label=live["label"].map(
            {"stable": "unstable", "unstable": "stable", "middle": "middle"}))
        flipped.append(surface.c4_statistics(swap))
        null.append(surface.c4_statistics(surface.shuffled_labels(live, rng)))
    block = surface.c4_block(pd.DataFrame(real), pd.DataFrame(null), anchors=range(6))
    ratio, diff = block["frequency_ratio"], block["binned_top_token_share_diff"]
    assert len(ratio["per_anchor"]) == 6 and block["anchors"] == list(range(6))
    assert 0.05 < ratio["interval"]["mean"] < 0.2 and ratio["interval"]["ci_high"] < 1
    assert diff["interval"]["mean"] == pytest.approx(0.3, abs=0.05)
    assert diff["interval"]["ci_low"] > 0
    assert 0 < diff["interval"]["ci_high"] - diff["interval"]["ci_low"]  # seeds vary
    # an anchor without a usable statistic is listed but left out of the interval
    gap = pd.DataFrame(real).assign(binned_top_token_share_diff=lambda f: f[
        "binned_top_token_share_diff"].where(f.index != 2))
    part = surface.c4_block(gap, pd.DataFrame(null), anchors=range(6))
    assert np.isnan(part["binned_top_token_share_diff"]["per_anchor"][2])
    assert part["binned_top_token_share_diff"]["interval"]["n"] == 5
    assert np.isfinite(part["binned_top_token_share_diff"]["interval"]["ci_low"])
    # swapping the labels flips both statistics
    flip = pd.DataFrame(flipped)
    assert (flip["frequency_ratio"] > 5).all()
    assert (flip["binned_top_token_share_diff"] < -0.2).all()
    # the shuffled-label null: ratio near 1, difference near 0, both intervals covering them
    n_ratio = block["null"]["frequency_ratio"]["interval"]
    n_diff = block["null"]["binned_top_token_share_diff"]["interval"]
    assert abs(n_ratio["mean"] - 1) < 0.25 and n_ratio["ci_low"] < 1 < n_ratio["ci_high"]
    assert abs(n_diff["mean"]) < 0.05 and n_diff["ci_low"] < 0 < n_diff["ci_high"]
    # the dead features would have counted as unstable: ratio 0, share difference reversed
    with_dead = planted_anchor(np.random.default_rng(1)).replace({"label": {"dead": "unstable"}})
    assert surface.c4_statistics(with_dead)["frequency_ratio"] < \
        surface.c4_statistics(with_dead[surface.live_features(with_dead)])["frequency_ratio"]


def test_shuffled_labels_keeps_counts_and_other_labels() -> None:
    t = planted_anchor(np.random.default_rng(2))
    s = surface.shuffled_labels(t, np.random.default_rng(0))
    assert (s["label"].value_counts() == t["label"].value_counts()).all()
    keep = ~t["label"].isin(["stable", "unstable"])
    assert (s.loc[keep, "label"] == t.loc[keep, "label"]).all()
    assert (s["label"] != t["label"]).any()
