"""Activation statistics and surface-form measures on a cache with planted token features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from saestab import surface
from saestab.activations import ActivationCache, write_cache
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


def test_scan_and_feature_table(cache: ActivationCache) -> None:
    sae = identity_relu()
    acts = surface.scan_activations(sae, cache, top_k=16, batch_size=100)
    x = cache.load()
    np.testing.assert_array_equal(acts.count, (x > 0).sum(0))
    np.testing.assert_allclose(acts.max, x.max(0), rtol=1e-6)
    np.testing.assert_allclose(acts.mass, x.sum(0) * 2.0, rtol=1e-5)  # ||d_j|| = 2
    # the top rows hold the largest activations, in order
    for j in range(D):
        np.testing.assert_allclose(acts.top_values[:, j], np.sort(x[:, j])[::-1][:16], rtol=1e-6)
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


def test_run_surface_contexts_and_browser(tmp_path: Path, cache: ActivationCache) -> None:
    seeds = {0: save_sae(identity_relu(), tmp_path / "seed0")}
    census = pd.DataFrame({"seed": 0, "feature": np.arange(D),
                           "label": ["unstable"] * 3 + ["stable"] * 5,
                           "p_hat": [0.0] * 3 + [1.0] * 5})
    res = surface.run_surface(seeds, census, cache, ByteTokenizer(), anchors=[0], top_k=16,
                              n_browse=2, n_contexts=3)
    assert len(res.features) == D and set(res.features["label"]) == {"stable", "unstable"}
    assert res.summary["single_token_unstable"]["mean"] == 1.0  # '.', ' ', '9'
    assert res.summary["single_token_stable"]["mean"] == 0.0
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
