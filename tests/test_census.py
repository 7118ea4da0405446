"""Census of a configuration from saved SAE directories, figures and the Table-1 analogue."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saestab import census, plotting
from saestab.evaluation import write_evaluation
from saestab.io import InputError
from saestab.sae import SAE, SAEConfig, save_sae

D, M, SHARED = 32, 24, 12


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(path, dirs: np.ndarray, seed: int, ev: float) -> None:
    sae = SAE(SAEConfig(architecture="topk", d_in=D, d_sae=M, k=4))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(dirs.astype(np.float32)))
        sae.W_enc.copy_(sae.W_dec.T)
    save_sae(sae, path)
    freq = np.linspace(0.001, 0.2, M)
    write_evaluation({"ev": ev, "mse": 0.1, "l0": 4.0, "dead_fraction": 0.0,
                      "dense_fraction": 0.0, "n_tokens": 100, "frequency": freq,
                      "mass": freq * 10}, path)


@pytest.fixture()
def groups(tmp_path):
    """4 seeds in two groups: 12 shared directions (noisy, permuted) + 12 private random ones;
    epoch-1 snapshots are all random (nothing shared yet)."""
    rng = np.random.default_rng(0)
    shared = _unit(rng.standard_normal((SHARED, D)))
    out = [tmp_path / "group0", tmp_path / "group1"]
    for s in range(4):
        g = out[s // 2]
        own = shared + 0.05 * rng.standard_normal((SHARED, D))
        dirs = _unit(np.concatenate([own, rng.standard_normal((M - SHARED, D))]))
        _save(g / f"seed{s}", dirs[rng.permutation(M)], s, ev=0.7 + 0.01 * s)
        _save(g / "snapshots" / "epoch1" / f"seed{s}", _unit(rng.standard_normal((M, D))), s,
              ev=0.5)
    return out


def test_census_reads_train_statistics_from_a_cache_or_from_saved_scans(groups, tmp_path):
    """The train split's statistics (dead latents, masking's mass and energy) are the same
    whether the census scans the cache itself or reads the scans of rule scan_features."""
    from saestab.activations import write_cache
    from saestab.evaluation import read_scans, scan_sae, write_scans
    from saestab.sae import load_sae

    rng = np.random.default_rng(1)
    table = torch.from_numpy(rng.standard_normal((50, D)).astype(np.float32))
    train = write_cache(tmp_path / "train", lambda ids: table[ids], rng.integers(0, 50, (20, 8)),
                        d=D, bos_token_id=None, outlier_factor=None)
    direct = census.run_census(groups, n_draws=2, hungarian_pairs=1, train_cache=train,
                               train_tokens=3)
    seeds = census.seed_map(groups)
    path = write_scans({s: scan_sae(load_sae(d), train, top_k=3, max_tokens=3)
                        for s, d in seeds.items()}, tmp_path / "train.npz")
    read = census.run_census(groups, n_draws=2, hungarian_pairs=1, train_scans=read_scans(path))
    cols = ["train_frequency", "train_mass", "train_energy", "label"]
    assert direct.table[cols].equals(read.table[cols])
    assert direct.summary["dead_fraction_train"] == read.summary["dead_fraction_train"]
    assert (direct.table["label"] == "dead").any()  # on 3 rows at most 12 of 24 latents fire
    with pytest.raises(InputError, match="no train-split feature scan for seed 0"):
        census.run_census(groups, n_draws=2, hungarian_pairs=1,
                          train_scans={s: v for s, v in read_scans(path).items() if s})
    with pytest.raises(ValueError, match="not both"):
        census.run_census(groups, train_cache=train, train_scans=read_scans(path))


def test_census_planted(groups, tmp_path):
    c = census.run_census(groups, theta=0.7, eps=0.05, n_draws=3, hungarian_pairs=3)
    s = c.summary
    assert s["n_seeds"] == 4 and s["n_features"] == M
    assert s["stable"]["mean"] == pytest.approx(SHARED / M)
    assert s["unstable"]["mean"] == pytest.approx(1 - SHARED / M)
    assert s["stable"]["std"] == pytest.approx(0.0)
    assert s["hungarian_iou"]["mean"] == pytest.approx(1.0)
    assert s["ev"]["mean"] == pytest.approx(0.715)
    assert s["l0"]["mean"] == 4.0 and s["target_l0"] == 4.0  # TopK: its k
    assert sorted(c.table["seed"].unique()) == [0, 1, 2, 3]
    assert set(c.table.columns) >= {"p_hat", "ci_low", "ci_high", "label", "firing_frequency",
                                    "activation_mass"}
    # epoch-1 snapshots share nothing; the final SAEs share half their features
    tl = c.training_length
    assert list(tl["epoch"]) == [1]
    assert tl["stable"].iloc[0] == 0.0 and tl["ev"].iloc[0] == pytest.approx(0.5)
    # seed-level intervals of the snapshot shares (jackknife) and of EV (t over seeds)
    assert tl["stable_ci_low"].iloc[0] == 0.0 and tl["stable_ci_high"].iloc[0] == 0.0
    assert tl["unstable_ci_low"].iloc[0] == pytest.approx(1.0)
    assert tl["ev_ci_low"].iloc[0] == pytest.approx(0.5)
    # the figures' sweeps and frequency profile, with intervals, at the census's θ and ε
    at = {(r["sweep"], r["theta"], r["eps"]): r for r in s["sweeps"]}
    assert at[("theta", 0.7, 0.05)]["stable"]["mean"] == pytest.approx(SHARED / M)
    assert at[("eps", 0.7, 0.05)]["stable"] == at[("theta", 0.7, 0.05)]["stable"]
    assert sum(r["n_features"] for r in s["p_hat_by_frequency"]) == 4 * M
    census.write_census(c, tmp_path / "census")
    for name in ("features.parquet", "pairwise.npz", "pairwise.json", "sweeps.parquet",
                 "n_subsample.parquet", "fractions.csv", "training_length.csv", "summary.json"):
        assert (tmp_path / "census" / name).is_file(), name


def _maxcos(S: int, m: int, stable: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An (S, S, m) best-match table: features in ``stable`` match in every other seed (cosine
    0.9 to 1), the others in none (below 0.3)."""
    mc = rng.uniform(0.0, 0.3, (S, S, m))
    mc[:, :, stable] = rng.uniform(0.9, 1.0, (S, S, int(np.sum(stable))))
    return mc.astype(np.float16)


def test_sweep_intervals_are_the_label_shares_with_seed_level_intervals():
    rng = np.random.default_rng(0)
    S, m = 5, 40
    mc = _maxcos(S, m, np.arange(m) < 10, rng)
    live = np.ones((S, m), dtype=bool)
    live[0, -4:] = False  # dead latents of one seed leave its shares
    rows = census.sweep_intervals(mc, live, [0.2, 0.5, 0.95], [0.0, 0.4], theta=0.5, eps=0.05)
    assert [(r["sweep"], r["theta"], r["eps"]) for r in rows] == [
        ("theta", 0.2, 0.05), ("theta", 0.5, 0.05), ("theta", 0.95, 0.05),
        ("eps", 0.5, 0.0), ("eps", 0.5, 0.4)]
    at = {(r["sweep"], r["theta"]): r for r in rows}
    # θ = 0.5 separates the planted sets exactly: 10 stable of 40 (of 36 live for seed 0)
    expect = np.mean([10 / 36] + [10 / 40] * 4)
    assert at[("theta", 0.5)]["stable"]["mean"] == pytest.approx(expect)
    assert at[("theta", 0.5)]["unstable"]["mean"] == pytest.approx(1 - expect)
    assert at[("theta", 0.2)]["stable"]["mean"] > at[("theta", 0.5)]["stable"]["mean"]
    assert at[("theta", 0.95)]["stable"]["mean"] < at[("theta", 0.5)]["stable"]["mean"]
    for r in rows:
        for lab in ("stable", "middle", "unstable"):
            iv = r[lab]
            assert "replicates" not in iv and iv["n"] == S
            assert iv["ci_low"] <= iv["mean"] <= iv["ci_high"]
    # the interval is the jackknife of the claim's own statistic
    j = census.jackknife_labels(mc, live, 0.5, 0.05)
    assert at[("theta", 0.5)]["stable"]["ci_low"] == pytest.approx(j["stable"]["ci_low"])
    # a seed-dependent table has a wider interval than a seed-independent one
    noisy = mc.copy()
    noisy[2, :, :20] = np.float16(0.1)  # seed 2 matches none of the first 20 features
    w = census.sweep_intervals(noisy, live, [0.5], [], theta=0.5, eps=0.05)[0]["stable"]
    assert w["ci_high"] - w["ci_low"] > at[("theta", 0.5)]["stable"]["ci_high"] - \
        at[("theta", 0.5)]["stable"]["ci_low"]


def test_p_hat_by_frequency_follows_the_planted_profile():
    rng = np.random.default_rng(1)
    S, m = 4, 60
    freq = np.tile(np.logspace(-4, -1, m), (S, 1))
    mc = _maxcos(S, m, np.arange(m) >= m // 2, rng)  # the frequent half is stable
    live = np.ones((S, m), dtype=bool)
    live[:, 0] = False  # dead latents are left out
    rows = census.p_hat_by_frequency(mc, live, freq, theta=0.7, n_bins=4)
    assert [r["bin"] for r in rows] == [0, 1, 2, 3]
    assert sum(r["n_features"] for r in rows) == S * (m - 1)
    assert rows[0]["log10_freq_low"] == pytest.approx(np.log10(freq[0, 1]))
    assert rows[-1]["log10_freq_high"] == pytest.approx(-1.0)
    assert rows[0]["p_hat"]["mean"] == 0.0 and rows[-1]["p_hat"]["mean"] == 1.0
    for r in rows:  # every replicate recomputes p̂: 0 and 1 stay 0 and 1
        assert r["p_hat"]["ci_low"] <= r["p_hat"]["mean"] <= r["p_hat"]["ci_high"]
    assert rows[0]["p_hat"]["ci_high"] == pytest.approx(0.0)
    # one seed that matches nothing lowers every bin's p̂ and widens its interval
    mc[:, 3] = np.float16(0.1)
    mc[3, :] = np.float16(0.1)
    low = census.p_hat_by_frequency(mc, live, freq, theta=0.7, n_bins=4)
    assert low[-1]["p_hat"]["mean"] < 1.0
    assert low[-1]["p_hat"]["ci_high"] - low[-1]["p_hat"]["ci_low"] > 0.1


def test_figures_and_table1(groups, tmp_path):
    c = census.run_census(groups, n_draws=2, hungarian_pairs=1)
    configs = []
    for w in ("trained", "random"):
        d = tmp_path / w
        census.write_census(c, d)
        configs.append({"model": "m", "weights": w, "hook": "h", "variant": "topk",
                        "dir": str(d)})
    for name, fn in plotting.FIGURES.items():
        out = tmp_path / f"{name}.png"
        fn(configs, out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", name
    df = plotting.table1(configs)
    assert list(df["stable_pct"]) == pytest.approx([50.0, 50.0])
    md = plotting.table1_markdown(df)
    assert "| m | trained | h | topk | 4 | 24 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in md
    plotting.table1_figure(df, tmp_path / "t1.png")
    assert json.loads((tmp_path / "trained" / "summary.json").read_text())["n_seeds"] == 4


def test_target_l0_of_a_recipe(tmp_path):
    """What L0 a configuration aims at: a steered penalty's target_l0, the TopK family's k,
    nothing for a fixed penalty coefficient."""
    for name, arch, k, recipe in (("steered", "relu", None, {"target_l0": 6.0}),
                                  ("fixed", "relu", None, {"l1_coefficient": 0.1,
                                                           "target_l0": None}),
                                  ("topk", "topk", 4, {})):
        save_sae(SAE(SAEConfig(architecture=arch, d_in=D, d_sae=M, k=k, recipe=recipe)),
                 tmp_path / name)
    assert census.target_l0(tmp_path / "steered") == 6.0
    assert census.target_l0(tmp_path / "fixed") is None
    assert census.target_l0(tmp_path / "topk") == 4.0


def test_missing_seeds_are_named(tmp_path):
    (tmp_path / "group0").mkdir()
    with pytest.raises(InputError, match="need at least two trained seeds"):
        census.seed_dirs([tmp_path / "group0"])
    with pytest.raises(InputError, match="expected a directory of trained SAEs"):
        census.seed_dirs([tmp_path / "nope"])
