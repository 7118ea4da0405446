"""Synthetic model: ground truth, samples, cache format, recovery analysis, and an easy SAE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saestab import synthetic, training
from saestab.activations import ActivationCache
from saestab.io import InputError
from saestab.sae import load_sae

SPEC = synthetic.SyntheticSpec(
    d=16, n_points=4, point_prob=0.1,
    groups=(synthetic.GroupSpec(1, 1, 0.1), synthetic.GroupSpec(2, 1, 0.1),
            synthetic.GroupSpec(4, 1, 0.1)),
    noise_std=0.0, n_train=4096, n_eval=1024, context_length=64, seed=3)


def test_truth_is_orthonormal_when_it_fits():
    truth = synthetic.make_truth(SPEC)
    assert SPEC.total_dims == 4 + 1 + 2 + 4 <= SPEC.d
    allv = np.concatenate([b.T for b in truth.bases()])  # every direction, (11, 16)
    np.testing.assert_allclose(allv @ allv.T, np.eye(11), atol=1e-10)
    comps = truth.components()
    assert list(comps["kind"]) == ["point"] * 4 + ["group"] * 3
    assert list(comps["rank"]) == [1, 1, 1, 1, 1, 2, 4]
    # superposition: more directions than d still gives unit points and orthonormal groups
    big = synthetic.make_truth(synthetic.SyntheticSpec(
        d=8, n_points=10, groups=(synthetic.GroupSpec(4, 2, 0.1),)))
    np.testing.assert_allclose(np.linalg.norm(big.points, axis=1), 1.0)
    for U in big.groups:
        np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)


def test_samples_live_in_the_truth_with_the_right_statistics():
    truth = synthetic.make_truth(SPEC)
    x = synthetic.sample(SPEC, truth, 20000, np.random.default_rng(0)).astype(np.float64)
    # without noise every token is a combination of the ground-truth directions
    allv = np.concatenate([b.T for b in truth.bases()])
    resid = x - (x @ allv.T) @ allv
    assert np.abs(resid).max() < 1e-5
    # point coefficients are >= 0 and fire with point_prob
    coef = x @ truth.points.T
    assert coef.min() > -1e-5
    assert (coef > 1e-6).mean() == pytest.approx(0.1, abs=0.01)
    # a rank-4 group: norm inside it is the magnitude, direction isotropic (no privileged basis)
    U = truth.groups[2]
    inside = x @ U
    norms = np.linalg.norm(inside, axis=1)
    on = norms > 1e-6
    assert on.mean() == pytest.approx(0.1, abs=0.01)
    assert norms[on].mean() == pytest.approx(1.0, abs=0.02)
    u = inside[on] / norms[on, None]
    np.testing.assert_allclose(u.T @ u / on.sum(), np.eye(4) / 4, atol=0.03)
    # a rank-1 group fires with either sign
    s = x @ truth.groups[0][:, 0]
    assert (s > 1e-6).mean() == pytest.approx((s < -1e-6).mean(), abs=0.015)


def test_massive_coordinate_adds_an_offset_and_variance_to_coordinate_0_only():
    spec = synthetic.SyntheticSpec(d=16, n_points=8, point_prob=0.1, massive_mean=20.0,
                                   massive_std=3.0, seed=3)
    plain = synthetic.SyntheticSpec(d=16, n_points=8, point_prob=0.1, seed=3)
    truth = synthetic.make_truth(spec)
    x = synthetic.sample(spec, truth, 20000, np.random.default_rng(0)).astype(np.float64)
    y = synthetic.sample(plain, truth, 20000, np.random.default_rng(0)).astype(np.float64)
    # drawn after everything else: the other coordinates are the plain model's samples
    np.testing.assert_array_equal(x[:, 1:], y[:, 1:])
    extra = x[:, 0] - y[:, 0]
    assert extra.mean() == pytest.approx(20.0, abs=0.1)
    assert extra.std() == pytest.approx(3.0, rel=0.03)
    with pytest.raises(ValueError, match="massive_std"):
        synthetic.SyntheticSpec(massive_std=-1.0)


def test_generate_writes_valid_caches_and_truth(tmp_path):
    truth = synthetic.generate(SPEC, tmp_path / "train", tmp_path / "eval", tmp_path / "t.npz",
                               name="toy", hook="features")
    train = ActivationCache.open(tmp_path / "train")
    ev = ActivationCache.open(tmp_path / "eval")
    assert train.n_tokens == 4096 and ev.n_tokens == 1024 and train.d == 16
    assert train.header["weights"] == "synthetic" and train.header["model"] == "toy"
    assert train.header["synthetic"]["n_points"] == 4
    np.testing.assert_array_equal(train.token_ids(), np.arange(4096))
    np.testing.assert_array_equal(train.positions()[70], [1, 6])  # row 70 = context 1, pos 6
    again = synthetic.sample(SPEC, truth, 4096, np.random.default_rng([SPEC.seed, 1]))
    np.testing.assert_array_equal(train.load(), again)  # rows in order, seeded
    assert not np.allclose(ev.load(0, 100), train.load(0, 100))  # eval is its own draw
    back = synthetic.read_truth(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.points, truth.points)
    assert [U.shape for U in back.groups] == [(16, 1), (16, 2), (16, 4)]
    assert back.group_probs == [0.1, 0.1, 0.1]
    (tmp_path / "t.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="t.json"):
        synthetic.read_truth(tmp_path / "t.npz")


def _features(seeds, m, p_hat):
    return pd.DataFrame([{"seed": s, "feature": j, "p_hat": p_hat(s, j),
                          "label": "stable" if p_hat(s, j) == 1 else "unstable"}
                         for s in seeds for j in range(m)])


def test_recovery_of_planted_latents():
    """Latents = the point directions + a seed-specific rotated basis of each group (+ junk):
    points are matched exactly, group spans equal the truth in every seed, group latents differ
    across seeds."""
    truth = synthetic.make_truth(SPEC)
    rng = np.random.default_rng(0)
    seeds, dirs = [0, 1, 2], []
    for _ in seeds:
        parts = [truth.points]
        for U in truth.groups:
            q = np.linalg.qr(rng.standard_normal((U.shape[1], U.shape[1])))[0]
            parts.append((U @ q).T)  # a random basis of the group's subspace
        parts.append(rng.standard_normal((3, 16)) * 1e-3 + np.eye(16)[-3:])  # outside truth
        dirs.append(np.concatenate(parts))
    m = len(dirs[0])
    rec = synthetic.recovery(dirs, seeds, truth,
                             _features(seeds, m, lambda s, j: 1.0 if j < 5 else 0.0))
    br = rec.by_rank.set_index(["kind", "rank"])
    assert br.loc[("point", 1), "best_cosine_min"] == pytest.approx(1.0)
    for r in (1, 2, 4):
        assert br.loc[("group", r), "truth_overlap"] == pytest.approx(1.0)
        assert br.loc[("group", r), "truth_max_angle_deg"] < 1e-3
        assert br.loc[("group", r), "cross_seed_overlap"] == pytest.approx(1.0)
        assert br.loc[("group", r), "latents_per_component"] == r
    assert br.loc[("point", 1), "latent_p_hat"] == 1.0
    assert br.loc[("group", 4), "latent_p_hat"] == 0.0
    assert rec.summary["unassigned_fraction"] == pytest.approx(3 / m)
    # with θ, the seed-level intervals the figures draw: point latents reappear in every seed,
    # group latents (a fresh random basis per seed) in none; the spans agree exactly
    rec_t = synthetic.recovery(dirs, seeds, truth,
                               _features(seeds, m, lambda s, j: 1.0 if j < 5 else 0.0),
                               theta=0.7, eps=0.05)
    iv = {(r["kind"], r["rank"]): r for r in rec_t.summary["intervals"]["by_rank"]}
    assert iv[("point", 1)]["latent_p_hat"]["mean"] == 1.0
    assert iv[("point", 1)]["latent_stable_fraction"]["ci_low"] == pytest.approx(1.0)
    assert iv[("group", 4)]["latent_p_hat"]["mean"] < 0.5
    assert iv[("group", 4)]["latent_stable_fraction"]["mean"] < 0.5
    assert iv[("group", 4)]["cross_seed_overlap"]["mean"] == pytest.approx(1.0)
    assert iv[("group", 2)]["truth_overlap"]["ci_low"] == pytest.approx(1.0)
    comps = rec_t.summary["intervals"]["components"]
    assert len(comps) == SPEC.n_components
    assert {c["kind"] for c in comps} == {"point", "group"}
    for c in comps:
        assert c["max_angle_deg"]["mean"] < 1e-3 and c["max_angle_deg"]["n"] == len(seeds)
        assert c["p_hat"]["ci_low"] <= c["p_hat"]["mean"] <= c["p_hat"]["ci_high"]
    assert rec_t.summary["c6"]["points"]["latent_p_hat"]["mean"] == 1.0
    # a group with too few latents is only partly recovered: missing dimensions count 90 degrees
    cut = [d[:-4 - 3 + 2] for d in dirs]  # drop two of the rank-4 group's latents and the junk
    rec2 = synthetic.recovery(cut, seeds, truth, _features(seeds, len(cut[0]), lambda s, j: 0.0))
    r4 = rec2.by_rank.set_index(["kind", "rank"]).loc[("group", 4)]
    assert r4["truth_overlap"] == pytest.approx(0.5) and r4["truth_max_angle_deg"] == 90.0


def test_point_features_are_recovered_by_a_topk_sae(tmp_path):
    """Easy setting: orthogonal point features, no noise; a TopK SAE finds every one of them
    (max cosine >= 0.9) and the census machinery's inputs are in place."""
    spec = synthetic.SyntheticSpec(d=16, n_points=8, point_prob=0.08,
                                   groups=(synthetic.GroupSpec(2, 1, 0.08),), noise_std=0.0,
                                   n_train=8192, n_eval=1024, context_length=64, seed=0)
    truth = synthetic.generate(spec, tmp_path / "train", tmp_path / "eval", tmp_path / "t.npz")
    cfg = training.TrainConfig(architecture="topk", d_sae=24, k=3, lr=0.01, batch_size=128,
                               n_epochs=6, warmup_steps=10)
    training.train_group(tmp_path / "train", cfg, [0], 0, training.RunOptions(
        out_dirs=[tmp_path / "seed0"], snapshots_at_epochs=()))
    dirs = load_sae(tmp_path / "seed0").decoder_directions().detach().numpy()
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    best = np.abs(unit @ truth.points.T).max(axis=0)
    assert best.min() >= 0.9, best
    rec = synthetic.recovery([dirs], [0], truth, _features([0], 24, lambda s, j: 0.0))
    assert rec.by_rank.set_index(["kind", "rank"]).loc[("group", 2), "truth_overlap"] > 0.9


def test_principal_angles_count_missing_dimensions():
    e = np.eye(4)
    np.testing.assert_allclose(synthetic.principal_angles(e[:, :2], e[:, :2]), [0, 0])
    np.testing.assert_allclose(synthetic.principal_angles(e[:, :2], e[:, :1]), [0, np.pi / 2])
    empty = np.zeros((4, 0))
    np.testing.assert_allclose(synthetic.principal_angles(empty, empty, 3), [np.pi / 2] * 3)
