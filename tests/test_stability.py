"""Stability census: planted truth, confidence intervals, labels, sweeps, the library API."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from saestab import stability as st
from saestab.matching import pairwise_max_cosine

from .test_matching import planted_saes, unit

Z975 = 1.959963984540054  # standard normal 0.975 quantile


def wilson_closed_form(x: int, n: int, z: float = Z975) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


# ------------------------------------------------------------------------------------------
# planted truth
# ------------------------------------------------------------------------------------------
def test_planted_shared_are_stable_private_unstable():
    dirs, perms, n_shared = planted_saes(S=6)
    res = st.stability(dirs, theta=0.7, eps=0.05, chunk_size=16)
    t = res.table
    assert len(t) == 6 * 48 and (t["N"] == 5).all()
    shared = np.concatenate([p < n_shared for p in perms])  # table is ordered by (anchor, feature)
    assert (t["anchor"].to_numpy() == np.repeat(np.arange(6), 48)).all()
    assert (t.loc[shared, "X"] == 5).all() and (t.loc[shared, "p_hat"] == 1.0).all()
    assert (t.loc[~shared, "X"] == 0).all() and (t.loc[~shared, "p_hat"] == 0.0).all()
    assert (t.loc[shared, "label"] == "stable").all()
    assert (t.loc[~shared, "label"] == "unstable").all()
    assert (t.loc[shared, "max_cos_median"] > 0.85).all()
    assert (t.loc[~shared, "max_cos_median"] < 0.6).all()
    lo, hi = wilson_closed_form(5, 5)
    np.testing.assert_allclose(t.loc[shared, "ci_low"], lo)
    np.testing.assert_allclose(t.loc[shared, "ci_high"], hi)
    np.testing.assert_allclose(res.fractions["stable"], 0.5)
    np.testing.assert_allclose(res.fractions["unstable"], 0.5)
    np.testing.assert_allclose(res.fractions["middle"], 0.0)
    spread = res.spread.set_index("label")
    assert spread.loc["stable", "mean"] == pytest.approx(0.5)
    assert spread.loc["stable", "std"] == pytest.approx(0.0)
    assert (spread["n_anchors"] == 6).all()


def test_identical_saes_are_stable_everywhere():
    rng = np.random.default_rng(7)
    A = unit(rng.standard_normal((50, 64)))
    res = st.stability([A, A.copy(), torch.from_numpy(A), A])
    assert (res.table["p_hat"] == 1.0).all()
    assert (res.table["label"] == "stable").all()
    np.testing.assert_allclose(res.fractions["stable"], 1.0)


def test_random_rotation_is_unstable():
    rng = np.random.default_rng(8)
    A = unit(rng.standard_normal((64, 64)))
    dirs = [A] + [A @ random_rotation(64, rng) for _ in range(3)]
    res = st.stability(dirs)
    assert res.table["p_hat"].mean() < 0.02
    assert (res.fractions["unstable"] >= 0.95).all()


def test_saes_and_paths_are_accepted(tmp_path):
    from saestab.sae import SAE, SAEConfig, save_sae

    dirs, perms, n_shared = planted_saes(S=3)
    saes, paths = [], []
    for s, dirs_s in enumerate(dirs):
        sae = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=48))
        with torch.no_grad():
            sae.W_dec.copy_(torch.from_numpy(dirs_s) * (1 + s))  # norms need not be 1
        saes.append(sae)
        paths.append(save_sae(sae, tmp_path / f"sae{s}"))
    want = st.stability(dirs).table
    for inputs in (saes, paths, [str(p) for p in paths]):
        got = st.stability(inputs).table
        pd.testing.assert_frame_equal(got, want)


# ------------------------------------------------------------------------------------------
# intervals
# ------------------------------------------------------------------------------------------
def test_wilson_known_values():
    # hand-derived: 0/10 -> [0, z^2/10 / (1 + z^2/10)] = [0, 0.2775]; 5/10 -> 0.5 -/+ 0.2634
    lo, hi = st.wilson_interval(np.array([0, 5, 10]), 10)
    np.testing.assert_allclose(lo, [0.0, 0.2366, 0.7225], atol=5e-5)
    np.testing.assert_allclose(hi, [0.2775, 0.7634, 1.0], atol=5e-5)
    for x in range(11):
        want = wilson_closed_form(x, 10)
        got = st.wilson_interval(x, 10)
        assert got[0] == pytest.approx(want[0], abs=1e-12)
        assert got[1] == pytest.approx(want[1], abs=1e-12)


def test_wilson_vectorised_and_contains_p_hat():
    x = np.arange(0, 21).reshape(3, 7)
    lo, hi = st.wilson_interval(x, 20, alpha=0.1)
    assert lo.shape == hi.shape == (3, 7)
    assert ((lo <= x / 20) & (x / 20 <= hi)).all()
    wide = st.wilson_interval(x, 20, alpha=0.01)
    assert (wide[0] <= lo + 1e-12).all() and (wide[1] >= hi - 1e-12).all()
    assert st.wilson_interval(0, 0) == (0.0, 1.0)


def test_clopper_pearson_known_values():
    # x = 0: upper = 1 - (alpha/2)^(1/n); x = n: lower = (alpha/2)^(1/n)
    lo, hi = st.clopper_pearson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(lo, [0.0, 0.1871, 0.025 ** 0.1], atol=5e-5)
    np.testing.assert_allclose(hi, [1 - 0.025 ** 0.1, 0.8129, 1.0], atol=5e-5)
    # exact interval is wider than Wilson's
    wl, wh = st.wilson_interval(np.arange(11), 10)
    cl, ch = st.clopper_pearson_interval(np.arange(11), 10)
    assert (cl <= wl + 1e-12).all() and (ch >= wh - 1e-12).all()


GRID = [(x, n) for n in (*range(0, 13), 19, 40, 97) for x in range(n + 1)]


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
@pytest.mark.parametrize("ours, method", [(st.wilson_interval, "wilson"),
                                          (st.clopper_pearson_interval, "exact")])
def test_intervals_agree_with_scipy_binomtest(ours, method, alpha):
    # one call on the whole grid (shuffled, as a 2-D array) against scipy one (x, n) at a time,
    # x = 0 and x = n included; n = 0 has no binomtest and gives (0, 1)
    rng = np.random.default_rng(1)
    grid = np.array(GRID)[rng.permutation(len(GRID))]
    x, n = grid[:, 0].reshape(-1, 2), grid[:, 1].reshape(-1, 2)  # GRID has 250 entries
    lo, hi = ours(x, n, alpha)
    assert lo.shape == hi.shape == x.shape
    want = np.array([(0.0, 1.0) if m == 0 else tuple(
        stats.binomtest(int(k), int(m)).proportion_ci(1 - alpha, method=method))
        for k, m in grid])
    # scipy's exact bounds come from a root search (xtol 2e-12), ours from beta quantiles
    np.testing.assert_allclose(lo.ravel(), want[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(hi.ravel(), want[:, 1], rtol=0, atol=1e-10)
    assert (lo.ravel()[grid[:, 0] == 0] == 0.0).all()
    assert (hi.ravel()[grid[:, 0] == grid[:, 1]] == 1.0).all()
    assert ours(0, 0, alpha) == (0.0, 1.0)


@pytest.mark.parametrize("ours", [st.wilson_interval, st.clopper_pearson_interval])
def test_intervals_reject_impossible_counts(ours):
    with pytest.raises(ValueError, match="whole counts"):
        ours(2.5, 10)
    with pytest.raises(ValueError, match="0 <= x <= n"):
        ours(np.array([3, 11]), 10)
    with pytest.raises(ValueError, match="0 <= x <= n"):
        ours(-1, 10)
    lo, hi = ours(np.array([], dtype=np.int64), 10)
    assert lo.shape == hi.shape == (0,)


def test_interval_choice_in_table():
    maxcos = np.ones((4, 4, 3), np.float16)
    t = st.stability_from_maxcos(maxcos, interval="clopper-pearson")
    np.testing.assert_allclose(t["ci_low"], 0.025 ** (1 / 3))
    with pytest.raises(ValueError, match="interval"):
        st.stability_from_maxcos(maxcos, interval="normal")


# ------------------------------------------------------------------------------------------
# labels and fractions
# ------------------------------------------------------------------------------------------
def test_label_boundaries():
    assert list(st.label([0.95, 0.05, 0.5, 1.0, 0.0], eps=0.05)) == [
        "stable", "unstable", "middle", "stable", "unstable"]
    # 19 of 20 references at theta is p_hat = 0.95 = 1 - eps: stable
    S = 21
    maxcos = np.zeros((S, S, 2), np.float16)
    maxcos[0, 1:20, 0] = 0.9
    maxcos[0, 1:19, 1] = 0.9
    t = st.stability_from_maxcos(maxcos, theta=0.7, eps=0.05, anchors=[0])
    assert list(t["X"]) == [19, 18] and list(t["label"]) == ["stable", "middle"]


def test_theta_compared_on_stored_values():
    maxcos = np.zeros((3, 3, 2), np.float16)
    maxcos[0, 1:, 0] = np.float16(0.7)  # stored as 0.7002
    maxcos[0, 1:, 1] = np.float16(0.6997)
    t = st.stability_from_maxcos(maxcos, theta=0.7, anchors=[0])
    assert list(t["X"]) == [2, 0]
    # a cosine exactly at theta reappears (>=)
    maxcos[0, 1:, 1] = 0.5
    t = st.stability_from_maxcos(maxcos, theta=0.5, anchors=[0])
    assert list(t["X"]) == [2, 2]


def test_reappearance_counts():
    maxcos = np.zeros((4, 4, 3), np.float16)
    maxcos[1, [0, 2, 3], 0] = [0.5, 0.9, 0.69]
    maxcos[1, [0, 2, 3], 1] = 0.7
    maxcos[1, [0, 2, 3], 2] = 0.6997  # stored as 0.69971, below 0.6998 (not rounded to it)
    np.testing.assert_array_equal(st.reappearance_counts(maxcos, 0.5, anchor=1), [3, 3, 3])
    np.testing.assert_array_equal(st.reappearance_counts(maxcos, 0.6998, anchor=1), [1, 3, 0])
    np.testing.assert_array_equal(st.reappearance_counts(maxcos, 0.7, anchor=1), [1, 3, 0])
    np.testing.assert_array_equal(
        st.reappearance_counts(maxcos, 0.7, anchor=1, others=[2]), [1, 1, 0])
    with pytest.raises(ValueError, match="anchor"):
        st.reappearance_counts(maxcos, 0.7, anchor=1, others=[1, 2])


def test_label_fractions_and_anchor_spread():
    df = pd.DataFrame({"anchor": [0, 0, 0, 0, 1, 1, 1, 1],
                       "label": ["stable", "stable", "middle", "unstable"] + ["stable"] * 4})
    fr = st.label_fractions(df)
    assert list(fr.columns) == ["anchor", "n_features", "stable", "middle", "unstable"]
    np.testing.assert_allclose(fr[["stable", "middle", "unstable"]].to_numpy(),
                               [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    sp = st.anchor_spread(fr).set_index("label")
    assert sp.loc["stable", "mean"] == pytest.approx(0.75)
    assert sp.loc["stable", "std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    assert sp.loc["stable", "min"] == 0.5 and sp.loc["stable", "max"] == 1.0
    assert sp.loc["middle", "max"] == 0.25


def test_feature_statistics_are_merged():
    rng = np.random.default_rng(9)
    maxcos = rng.uniform(0, 1, (3, 3, 5)).astype(np.float16)
    freq = rng.uniform(0, 1, (3, 5))
    mass = rng.uniform(0, 1, (3, 5))
    t = st.stability_from_maxcos(maxcos, firing_frequency=freq, activation_mass=mass)
    np.testing.assert_array_equal(t["firing_frequency"].to_numpy().reshape(3, 5), freq)
    np.testing.assert_array_equal(t["activation_mass"].to_numpy().reshape(3, 5), mass)
    np.testing.assert_allclose(
        t["max_cos_median"].to_numpy().reshape(3, 5),
        [np.median(maxcos[a, [b for b in range(3) if b != a]].astype(np.float32), axis=0)
         for a in range(3)])
    with pytest.raises(ValueError, match="firing_frequency"):
        st.stability_from_maxcos(maxcos, firing_frequency=freq[:2])


# ------------------------------------------------------------------------------------------
# sweeps
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_maxcos() -> np.ndarray:
    """A table with a spread of reappearance rates: shared directions with varied noise."""
    rng = np.random.default_rng(10)
    S, m, d = 8, 120, 64
    base = unit(rng.standard_normal((m, d)))
    noise = np.linspace(0.0, 2.0, m)[:, None] / 8
    dirs = [unit(base + noise * rng.standard_normal((m, d))) for _ in range(S)]
    maxcos, _ = pairwise_max_cosine(dirs)
    return maxcos


def test_theta_sweep_is_monotone(mixed_maxcos):
    thetas = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    sw = st.theta_sweep(mixed_maxcos, thetas, eps=0.05)
    assert len(sw) == len(thetas) * 8
    np.testing.assert_allclose(sw[["stable", "middle", "unstable"]].sum(axis=1), 1.0)
    for _, g in sw.groupby("anchor"):
        g = g.sort_values("theta")
        assert (np.diff(g["stable"]) <= 0).all() and (np.diff(g["unstable"]) >= 0).all()
    mean = sw.groupby("theta")[["stable", "unstable"]].mean()
    assert mean["stable"].iloc[0] > 0.5 and mean["unstable"].iloc[-1] > 0.5  # not degenerate


def test_eps_sweep_is_monotone(mixed_maxcos):
    sw = st.eps_sweep(mixed_maxcos, [0.0, 0.05, 0.15, 0.3, 0.45], theta=0.7)
    for _, g in sw.groupby("anchor"):
        g = g.sort_values("eps")
        assert (np.diff(g["stable"]) >= 0).all() and (np.diff(g["unstable"]) >= 0).all()
        assert (np.diff(g["middle"]) <= 0).all()
    spread = st.anchor_spread(sw, by=["eps"])
    assert len(spread) == 5 * 3 and (spread["n_anchors"] == 8).all()


def test_n_subsample(mixed_maxcos):
    N = 7
    ns = [2, 4, N]
    out = st.n_subsample(mixed_maxcos, ns, theta=0.7, eps=0.05, draws=3,
                         rng=np.random.default_rng(0))
    assert len(out) == len(ns) * 3 * 8
    at_full = out[out["n"] == N]
    assert (at_full["agreement"] == 1.0).all()
    assert (at_full[["stable_kept", "unstable_kept"]].fillna(1.0) == 1.0).all().all()
    assert out.loc[out["n"] == 2, "agreement"].mean() < 1.0  # fewer seeds do change labels
    full = st.label_fractions(st.stability_from_maxcos(mixed_maxcos, 0.7, 0.05))
    np.testing.assert_allclose(at_full.groupby("anchor")["stable"].first(), full["stable"])
    again = st.n_subsample(mixed_maxcos, ns, draws=3, rng=np.random.default_rng(0))
    pd.testing.assert_frame_equal(out, again)
    with pytest.raises(ValueError, match="N=7"):
        st.n_subsample(mixed_maxcos, [8], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        st.n_subsample(mixed_maxcos, [2])


def test_n_subsample_keeps_planted_labels():
    dirs, _, _ = planted_saes(S=6)
    maxcos, _ = pairwise_max_cosine(dirs)
    out = st.n_subsample(maxcos, [1, 3, 5], draws=4, rng=np.random.default_rng(1))
    assert (out["agreement"] == 1.0).all()
    np.testing.assert_allclose(out["stable"], 0.5)


def test_ecdf():
    x, F = st.ecdf([3.0, 1.0, np.nan, 2.0, 2.0])
    np.testing.assert_array_equal(x, [1.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(F, [0.25, 0.5, 0.75, 1.0])
    x, F = st.ecdf([])
    assert x.size == F.size == 0


def test_parquet_roundtrip(tmp_path):
    dirs, _, _ = planted_saes(S=3)
    res = st.stability(dirs)
    path = tmp_path / "tables" / "stability.parquet"
    st.write_table(res.table, path)
    back = st.read_table(path)
    pd.testing.assert_frame_equal(back, res.table)
    assert list(path.parent.iterdir()) == [path]
    with pytest.raises(st.io.InputError, match="missing.parquet"):
        st.read_table(tmp_path / "missing.parquet")


def test_input_validation():
    with pytest.raises(ValueError, match="eps"):
        st.stability_from_maxcos(np.ones((3, 3, 2)), eps=0.5)
    with pytest.raises(ValueError, match="anchors"):
        st.stability_from_maxcos(np.ones((3, 3, 2)), anchors=[3])
    with pytest.raises(ValueError, match="at least two"):
        st.stability([np.ones((2, 4))])
