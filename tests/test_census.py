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
    census.write_census(c, tmp_path / "census")
    for name in ("features.parquet", "pairwise.npz", "pairwise.json", "sweeps.parquet",
                 "n_subsample.parquet", "fractions.csv", "training_length.csv", "summary.json"):
        assert (tmp_path / "census" / name).is_file(), name


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
