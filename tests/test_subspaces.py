"""Subspace analysis: spectra, ranks, transfer, principal angles, and a planted configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saestab import subspaces, synthetic
from saestab.io import InputError
from saestab.sae import SAE, SAEConfig, save_sae


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_subspace_with_itself_has_transfer_one_and_zero_angles():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((40, 12)) @ rng.standard_normal((12, 30)))  # rank 12 in 30
    r = subspaces.energy_rank(x, 1.0)
    assert r == 12
    b = subspaces.top_basis(x, r)
    assert b.shape == (30, 12)
    np.testing.assert_allclose(b.T @ b, np.eye(12), atol=1e-10)
    assert subspaces.captured(b, x) == pytest.approx(1.0, abs=1e-10)
    assert subspaces.captured_gram(b, x.T @ x) == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(subspaces.principal_angles(b, b), 0.0, atol=1e-6)
    # an orthogonal complement captures nothing and sits at 90 degrees
    q = np.linalg.qr(np.c_[b, rng.standard_normal((30, 18))])[0][:, 12:]
    assert subspaces.captured(q, x) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(subspaces.principal_angles(b, q[:, :5]), np.pi / 2, atol=1e-6)


def test_wide_and_tall_matrices_give_the_same_subspace():
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((10, 40))  # n < d: left Gram
    tall = np.r_[wide, 0.5 * wide, -wide]  # same row space, n > d: right Gram
    a, b = subspaces.top_basis(wide, 6), subspaces.top_basis(tall, 6)
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-8)
    np.testing.assert_allclose(a.T @ a, np.eye(6), atol=1e-8)
    np.testing.assert_allclose(subspaces.energy_spectrum(wide),
                               np.linalg.svd(wide, compute_uv=False) ** 2
                               / (wide**2).sum(), atol=1e-12)


def test_random_subspaces_capture_r_over_d():
    rng = np.random.default_rng(2)
    d, r = 64, 16
    x = _unit(rng.standard_normal((4000, d)))
    shares = [subspaces.captured(subspaces.random_basis(d, r, rng), x) for _ in range(5)]
    assert np.mean(shares) == pytest.approx(r / d, abs=0.01)
    # two random r-dim subspaces: mean cos^2 of the principal angles is r/d in expectation
    cos2 = [np.mean(np.cos(subspaces.principal_angles(subspaces.random_basis(d, r, rng),
                                                      subspaces.random_basis(d, r, rng))) ** 2)
            for _ in range(50)]
    assert np.mean(cos2) == pytest.approx(r / d, abs=0.02)


def test_effective_ranks():
    e = subspaces.energy_spectrum(np.eye(5, 20))  # 5 equal orthogonal directions
    assert subspaces.participation_ratio(e) == pytest.approx(5.0)
    assert subspaces.entropy_rank(e) == pytest.approx(5.0)
    assert subspaces.energy_rank(e, 0.9) == 5 and subspaces.energy_rank(e, 0.39) == 2
    skew = np.diag([10.0, 1.0, 1.0, 1.0])
    assert subspaces.energy_rank(skew, 0.9) == 1  # 100/103 of the energy in one direction
    assert subspaces.participation_ratio(subspaces.energy_spectrum(skew)) < 1.1


def test_pair_bootstrap():
    v = np.full((5, 5), 0.3)
    np.fill_diagonal(v, np.nan)
    s = subspaces.pair_bootstrap(v, n_boot=200)
    assert s["mean"] == pytest.approx(0.3) and s["n_pairs"] == 20
    assert s["ci_low"] == pytest.approx(0.3) and s["ci_high"] == pytest.approx(0.3)
    v = np.arange(25, dtype=float).reshape(5, 5)
    np.fill_diagonal(v, np.nan)
    s = subspaces.pair_bootstrap(v, n_boot=500)
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    # S = 3: about 1 resample in 9 draws a single seed and has no pair; it is skipped, so the
    # interval stays finite, within the range of the pair values
    v = np.array([[np.nan, 1.0, 2.0], [3.0, np.nan, 4.0], [5.0, 6.0, np.nan]])
    s = subspaces.pair_bootstrap(v, n_boot=2000)
    assert 1.0 <= s["ci_low"] < s["mean"] == 3.5 < s["ci_high"] <= 6.0


def test_seed_bootstrap():
    v = np.arange(10.0)
    s = subspaces.seed_bootstrap(v, n_boot=20000, seed=3)
    assert s["mean"] == 4.5 and s["n"] == 10 and s["std"] == pytest.approx(np.std(v, ddof=1))
    # the percentile interval of a mean of 10 values is close to mean ± z·sd/√n (plug-in sd)
    half = 1.96 * np.std(v) / np.sqrt(10)
    assert s["ci_low"] == pytest.approx(4.5 - half, abs=0.1)
    assert s["ci_high"] == pytest.approx(4.5 + half, abs=0.1)
    w = np.sqrt(v)  # means of resamples of 0..9 fall on a grid of 0.1, often on the same one
    assert subspaces.seed_bootstrap(w, n_boot=500, seed=3) == \
        subspaces.seed_bootstrap(w, n_boot=500, seed=3)
    assert subspaces.seed_bootstrap(w, n_boot=500, seed=4)["ci_low"] != \
        subspaces.seed_bootstrap(w, n_boot=500, seed=3)["ci_low"]
    narrow = subspaces.seed_bootstrap(v, n_boot=20000, seed=3, alpha=0.5)
    assert s["ci_low"] < narrow["ci_low"] < 4.5 < narrow["ci_high"] < s["ci_high"]
    # non-finite values dropped; constant values give a zero-width interval; one value, none
    s = subspaces.seed_bootstrap([1.0, np.nan, 3.0, np.inf])
    assert s["n"] == 2 and s["mean"] == 2.0 and 1.0 <= s["ci_low"] < s["ci_high"] <= 3.0
    s = subspaces.seed_bootstrap([0.25] * 4)
    assert s["ci_low"] == s["ci_high"] == 0.25
    s = subspaces.seed_bootstrap([0.25])
    assert s["n"] == 1 and np.isnan(s["ci_low"]) and np.isnan(s["ci_high"])


# ------------------------------------------------------------------------------------------
# a planted configuration
# ------------------------------------------------------------------------------------------
D, M, N_STABLE, N_UNSTABLE, N_DEAD, R = 32, 24, 8, 12, 4, 4


@pytest.fixture()
def planted(tmp_path):
    """4 seeds: 8 stable features (the same directions in every seed), 12 unstable features
    (random, different per seed) inside one shared 4-dim subspace orthogonal to the stable
    ones, and 4 dead random features."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    stable_dirs, u = q[:, :N_STABLE].T, q[:, N_STABLE:N_STABLE + R]
    rows = []
    group = tmp_path / "group0"
    for s in range(4):
        dirs = np.concatenate([stable_dirs, _unit(rng.standard_normal((N_UNSTABLE, R)) @ u.T),
                               _unit(rng.standard_normal((N_DEAD, D)))])
        sae = SAE(SAEConfig(architecture="topk", d_in=D, d_sae=M, k=4))
        with torch.no_grad():
            sae.W_dec.copy_(torch.from_numpy(dirs.astype(np.float32)))
            sae.W_enc.copy_(sae.W_dec.T)
        save_sae(sae, group / f"seed{s}")
        for j in range(M):
            label = ("stable" if j < N_STABLE else
                     "unstable" if j < N_STABLE + N_UNSTABLE + N_DEAD else "middle")
            rows.append({"anchor": s, "seed": s, "feature": j, "label": label, "p_hat": 0.0,
                         "firing_frequency": 0.0 if j >= N_STABLE + N_UNSTABLE else 0.1})
    features = pd.DataFrame(rows)
    x = rng.standard_normal((1024, D)).astype(np.float32)
    cache = synthetic.write_split(tmp_path / "eval", x, context_length=64,
                                  meta={"model": "m", "weights": "synthetic", "hook": "h"})
    return [group], features, cache


def test_planted_unstable_subspace_transfers(planted):
    groups, features, cache = planted
    g = subspaces.run_geometry(groups, features, cache, energy=1.0, n_bootstrap=100)
    s = g.summary
    assert s["n_unstable"] == {str(i): N_UNSTABLE for i in range(4)}  # dead ones left out
    assert s["ranks"]["unstable"]["energy_rank"]["mean"] == R
    assert s["ranks"]["stable"]["energy_rank"]["mean"] == N_STABLE
    tr = s["transfer"]["directions"]
    assert tr["cross"]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert tr["within"]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert tr["cross_full"]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert tr["random"]["mean"] == pytest.approx(R / D)
    assert tr["stable"]["mean"] == pytest.approx(0.0, abs=1e-9)  # orthogonal to the stable set
    assert tr["contrasts"]["cross_minus_random"]["ci_low"] > 0.8
    act = s["transfer"]["activations"]
    assert act["cross"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert act["stable"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["angles"]["cross"]["median_deg"] < 1e-3
    assert s["angles"]["random"]["median_deg"] > 20
    assert set(g.transfer["kind"]) >= set(subspaces.TRANSFER_KINDS)
    assert len(g.transfer[(g.transfer.kind == "cross") & (g.transfer.level == "directions")]) \
        == 12  # all ordered pairs of 4 seeds
    # a sample of pairs
    g2 = subspaces.run_geometry(groups, features, cache, energy=1.0, max_pairs=5, n_bootstrap=20)
    assert g2.summary["transfer"]["directions"]["cross"]["n_pairs"] == 5


def test_median_angle_intervals_average_pair_medians_over_seeds():
    rows = []
    medians = {(0, 1): 10.0, (0, 2): 20.0, (1, 2): 30.0, (0, 3): 40.0, (1, 3): 50.0,
               (2, 3): 60.0}
    for (a, b), med in medians.items():
        for k, off in enumerate((-5.0, 0.0, 5.0)):  # three angles around the pair's median
            rows.append({"seed_a": a, "seed_b": b, "kind": "cross", "angle_deg": med + off})
            rows.append({"seed_a": a, "seed_b": b, "kind": "random", "angle_deg": 80.0 + k})
    out = subspaces.median_angle_intervals(pd.DataFrame(rows))
    assert out["cross"]["mean"] == pytest.approx(35.0)
    assert out["random"]["mean"] == pytest.approx(81.0)
    assert out["random"]["ci_low"] == pytest.approx(81.0)  # the same in every pair
    assert out["cross"]["ci_low"] < 35.0 < out["cross"]["ci_high"]
    assert out["cross"]["n"] == 4 and "replicates" not in out["cross"]
    # leaving seed 3 out keeps the pairs (0,1), (0,2), (1,2): mean 20
    j = subspaces.pair_jackknife(subspaces._sym(subspaces._pair_matrix(
        pd.DataFrame([{"seed_a": a, "seed_b": b, "share": v} for (a, b), v in medians.items()]),
        [0, 1, 2, 3])))
    assert j["replicates"][3] == pytest.approx(20.0)
    assert out["cross"]["ci_high"] == pytest.approx(j["ci_high"])


def test_planted_figures_and_outputs(planted, tmp_path):
    from saestab.plotting import geometry as plots

    groups, features, cache = planted
    g = subspaces.run_geometry(groups, features, cache, energy=0.9, n_bootstrap=20)
    subspaces.write_geometry(g, tmp_path / "geo")
    c = {"model": "m", "weights": "trained", "hook": "h", "variant": "topk",
         "dir": str(tmp_path / "geo")}
    for name, fn in plots.FIGURES.items():
        fn([c, dict(c, weights="random")], tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name


def test_missing_labels_fail_with_the_column(planted):
    groups, features, cache = planted
    with pytest.raises(InputError, match="label"):
        subspaces.run_geometry(groups, features.drop(columns="label"), cache)
