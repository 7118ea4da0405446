"""Masking feature sets: explained variance, spliced next-token loss, mass-matched sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from saestab import masking
from saestab.activations import ActivationCache, write_cache
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


def test_matching_hits_target_within_5_percent() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        mass = rng.lognormal(0, 1.5, size=400)
        cand = rng.choice(400, size=300, replace=False)
        target = float(mass[cand].sum()) * rng.uniform(0.1, 0.8)
        chosen = masking.matched_subset(cand, mass, target, rng)
        assert set(chosen) <= set(cand) and len(set(chosen)) == len(chosen)
        assert abs(mass[chosen].sum() - target) / target < 0.05, trial


def planted_labels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 stable features of large mass and energy, 100 middle, 400 unstable, 50 dead."""
    labels = np.array(["stable"] * 100 + ["middle"] * 100 + ["unstable"] * 400 + ["dead"] * 50)
    mass = np.r_[rng.uniform(8, 12, 100), rng.uniform(1, 5, 100), rng.uniform(2, 4, 400),
                 rng.uniform(5, 50, 50)]  # a dead feature's train mass is 0; planted > 0 here
    energy = mass * np.r_[rng.uniform(2, 3, 100), rng.uniform(1, 2, 500), np.ones(50)]
    return labels, mass, energy


def test_masking_sets_match_mass_and_energy_and_counts() -> None:
    rng = np.random.default_rng(1)
    labels, mass, energy = planted_labels(rng)
    fs = masking.masking_sets(labels, mass, energy, rng)
    s = fs.sets
    np.testing.assert_array_equal(s["stable"], np.arange(100))
    np.testing.assert_array_equal(s["stable_matched"], s["stable"])  # unstable mass is larger
    assert set(s["unstable_matched"]) <= set(range(200, 600))
    assert fs.info["mass_match_error"] < 0.05
    # a stable feature carries ~10/3 the mass of an unstable one: ~3.3x as many are needed
    assert 2.9 < fs.info["count_ratio"] < 3.8
    # energy-matched: stable features carry ~2.5x the energy per unit mass, so the unstable
    # features together carry less train energy than the stable set: the stable side is drawn
    # down to the unstable total, keeping fewer stable features than the mass-matched pair
    assert fs.info["energy_matched_side"] == "stable"
    np.testing.assert_array_equal(s["unstable_energy_matched"], s["unstable"])
    assert set(s["stable_energy_matched"]) < set(s["stable"])
    e_stable, e_matched = (energy[s["stable_energy_matched"]].sum(),
                           energy[s["unstable_energy_matched"]].sum())
    assert abs(e_matched - e_stable) / e_stable < 0.05
    assert 50 < s["stable_energy_matched"].size < 90
    assert fs.info["energy_match_error"] == pytest.approx(abs(e_matched - e_stable) / e_stable)
    # the null pairs: disjoint, live, mass- or energy-matched
    assert set(s["null_stable"]).isdisjoint(s["null_matched"])
    assert set(s["null_stable"]).isdisjoint(s["null_energy_matched"])
    assert s["null_stable"].size == 100
    assert abs(mass[s["null_matched"]].sum() / mass[s["null_stable"]].sum() - 1) < 0.05
    assert abs(energy[s["null_energy_matched"]].sum() / energy[s["null_stable"]].sum() - 1) < 0.05
    assert s["random_n_stable"].size == 100 and s["random_n_unstable"].size == \
        s["unstable_matched"].size
    # when the unstable features carry less mass, the stable side is drawn down instead
    heavy = np.r_[mass[:100] * 5, mass[100:]]
    fs2 = masking.masking_sets(labels, heavy, energy, rng)
    assert fs2.info["matched_side"] == "stable"
    np.testing.assert_array_equal(fs2.sets["unstable_matched"], np.arange(200, 600))
    assert fs2.sets["stable_matched"].size < 100 and fs2.info["mass_match_error"] < 0.05


def test_dead_features_never_enter_a_set() -> None:
    rng = np.random.default_rng(2)
    labels, mass, energy = planted_labels(rng)
    dead = set(np.flatnonzero(labels == "dead"))
    for _ in range(20):
        fs = masking.masking_sets(labels, mass, energy, rng)
        for name, ids in fs.sets.items():
            assert dead.isdisjoint(ids), name
        assert fs.info["n_dead"] == 50 and fs.info["n_live"] == 600
    # without stable features the null still draws a third of the live features
    none_stable = np.where(labels == "stable", "middle", labels)
    fs = masking.masking_sets(none_stable, mass, energy, rng)
    assert fs.sets["stable"].size == 0 and fs.sets["unstable_matched"].size == 0
    assert fs.sets["null_stable"].size == 200 and dead.isdisjoint(fs.sets["null_matched"])
    assert dead.isdisjoint(fs.sets["null_energy_matched"])


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


def test_spliced_losses_share_the_clean_run(runners) -> None:
    """Several SAEs on the same contexts: one clean run per context batch in all, and per SAE
    the same numbers as measuring it alone."""
    rng = np.random.default_rng(3)
    contexts = rng.integers(0, 256, (6, 20))
    saes = [(random_sae(32, 64, seed=s), {"some": np.arange(s, 64, 5)}) for s in (7, 8, 9)]
    run_clean, run_patched = runners
    calls = []

    def counted(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(tokens.shape[0])
        return run_clean(tokens)

    together = masking.spliced_losses(counted, run_patched, saes, contexts, batch_size=4)
    assert calls == [4, 2]  # two batches, each run clean once for the three SAEs
    for (sae, sets), df in zip(saes, together, strict=True):
        alone = masking.spliced_loss(run_clean, run_patched, sae, contexts, sets, batch_size=4)
        pd.testing.assert_frame_equal(df, alone)
    # different SAEs, different losses: the tables are not one table three times
    assert together[0]["kl"].iloc[-1] != together[1]["kl"].iloc[-1]


def test_spliced_loss_leaves_outlier_positions_alone(runners) -> None:
    rng = np.random.default_rng(1)
    contexts = rng.integers(0, 256, (2, 16))
    sae = random_sae(32, 64, seed=6)
    df = masking.spliced_loss(*runners, sae, contexts, {}, outlier_threshold=0.0,
                              error_modes=(False,))
    # every position is above a zero threshold: nothing patched, the run stays clean
    assert int(df["n_patched"].iloc[0]) == 0
    assert df["kl"].iloc[0] == pytest.approx(0.0, abs=1e-9)


def pair_block(c3: dict, pair: str) -> dict:
    """The c3 entry of a :data:`masking.PAIRS` key: ``null_mass`` is ``c3["null"]["mass"]``."""
    return c3["null"][pair[len("null_"):]] if pair.startswith("null_") else c3[pair]


def census_rows(seed: int, labels: np.ndarray, mass: np.ndarray,
                energy: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame({"seed": seed, "feature": np.arange(len(labels)), "label": labels,
                         "train_mass": mass, "train_energy": mass if energy is None else energy})


def test_run_masking_table_and_summary(tmp_path: Path, cache: ActivationCache) -> None:
    rng = np.random.default_rng(2)
    seeds = {}
    rows = []
    for s in range(3):
        sae = random_sae(16, 40, seed=10 + s)
        seeds[s] = save_sae(sae, tmp_path / f"seed{s}")
        labels = rng.choice(["stable", "middle", "unstable", "dead"], size=40,
                            p=[0.3, 0.2, 0.4, 0.1])
        mass = np.where(labels == "stable", 10.0, 1.0) * rng.uniform(0.5, 1.5, 40)
        rows.append(census_rows(s, labels, mass, mass * rng.uniform(1, 2, 40)))
    table, summary = masking.run_masking(seeds, pd.concat(rows), cache, anchors=[0, 1, 2])
    assert len(table) == 3 * (len(masking.SET_ORDER) + 2)
    none = table[table["set"] == "none"]
    assert (none["delta_ev"] == 0).all()
    assert summary["sets"]["none"]["delta_ev"]["mean"] == 0
    assert summary["anchors"] == [0, 1, 2]
    assert summary["matched"]["mass_match_error_max"] < 0.25  # 40 features: coarse steps
    diff = summary["stable_vs_unstable_matched"]["delta_ev"]["difference"]
    assert diff["n"] == 3 and diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    c3 = summary["c3"]
    assert c3["anchors"] == [0, 1, 2] and set(c3) >= {"mass", "energy", "null", "n_matched",
                                                       "n_stable"}
    by = table.set_index(["seed", "set"])
    assert set(c3["null"]) == {"mass", "energy"}  # the null goes through the claim's rule
    for pair, (first, second) in masking.PAIRS.items():
        block = pair_block(c3, pair)["delta_ev"]
        assert block["stable"] == [by.loc[(s, first), "delta_ev"] for s in range(3)]
        assert block["matched"] == [by.loc[(s, second), "delta_ev"] for s in range(3)]
        assert block["ratio"]["mean"] == pytest.approx(np.mean(block["stable"])
                                                       / np.mean(block["matched"]))
        assert "delta_ce_err" not in pair_block(c3, pair)  # no spliced loss measured here
    assert c3["n_matched"]["energy"] == [int(by.loc[(s, "unstable_energy_matched"),
                                                     "n_features"]) for s in range(3)]
    with pytest.raises(Exception, match="anchor seed 7"):
        masking.run_masking(seeds, pd.concat(rows), cache, anchors=[7])
    old = pd.concat(rows).drop(columns=["train_energy"]).rename(
        columns={"train_mass": "activation_mass"})
    with pytest.raises(Exception, match=r"census\.parquet.*train_mass, train_energy.*rerun"):
        masking.run_masking(seeds, old, cache, anchors=[0], source="census.parquet")


def identity_sae(d: int, seed: int | None = None):
    """f = [relu(x), relu(-x)]: an exact reconstruction from 2d features of known directions.
    With ``seed``, each decoder row is scaled by a factor in [0.8, 1.2], so that SAEs of different
    seeds differ a little (the reconstruction is then no longer exact)."""
    eye = torch.eye(d)
    w_dec = torch.cat([eye, -eye], 0)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        w_dec = w_dec * (0.8 + 0.4 * torch.rand(2 * d, 1, generator=g))
    cfg = SAEConfig(architecture="relu", d_in=d, d_sae=2 * d)
    return sae_from_tensors(cfg, {"W_enc": torch.cat([eye, -eye], 1), "W_dec": w_dec,
                                  "b_enc": torch.zeros(2 * d), "b_dec": torch.zeros(d)})


def scaled_cache(path: Path, scale: np.ndarray, seed: int = 0) -> ActivationCache:
    """Activations ``N(0, diag(scale²))`` looked up by token id."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy((rng.standard_normal((300, scale.size)) * scale)
                             .astype(np.float32))
    return write_cache(path, lambda ids: table[ids], rng.integers(0, 300, (40, 16)),
                       d=scale.size, bos_token_id=None, outlier_factor=None)


def c3_ratio(cache: ActivationCache, labels: np.ndarray, pair: str,
             n_anchors: int = 6) -> dict:
    """The C3 ratio of one pair over ``n_anchors`` anchor SAEs (features ``relu(±x_i)``, decoder
    rows scaled per seed) with the same planted labels; train mass and energy are equal for every
    feature, so each matched pair has equal counts and only the eval split tells them apart."""
    saes = [identity_sae(16, seed=s) for s in range(n_anchors)]
    m = saes[0].cfg.d_sae
    rows = pd.concat([census_rows(s, labels, np.ones(m)) for s in range(n_anchors)])
    _, summary = masking.run_masking({s: s for s in range(n_anchors)}, rows, cache,
                                     anchors=list(range(n_anchors)), load=lambda s: saes[s],
                                     seed=3)
    return pair_block(summary["c3"], pair)["delta_ev"]["ratio"]


def test_c3_ratio_flips_with_the_features_that_carry_the_signal(tmp_path: Path) -> None:
    scale = np.r_[np.full(8, 3.0), np.full(8, 0.3)]  # dims 0-7 carry 99% of the variance
    cache = scaled_cache(tmp_path / "cache", scale)
    signal = np.tile(np.r_[["stable"] * 8, ["unstable"] * 8], 2)  # relu(+x_i), relu(-x_i)
    noise = np.where(signal == "stable", "unstable", "stable")
    for pair in ("mass", "energy"):
        high = c3_ratio(cache, signal, pair)
        assert high["mean"] > 50 and high["ci_low"] > 1.5, pair
        assert high["ci_high"] > high["ci_low"]  # the seeds differ: a real interval
        low = c3_ratio(cache, noise, pair)
        assert low["mean"] < 0.05 and low["ci_high"] < 1, pair


def test_c3_null_of_equal_effect_has_ratio_near_one(tmp_path: Path) -> None:
    cache = scaled_cache(tmp_path / "cache", np.ones(16))
    labels = np.tile(np.r_[["stable"] * 8, ["unstable"] * 8], 2)
    for pair in ("null_mass", "null_energy"):
        null = c3_ratio(cache, labels, pair)
        assert abs(null["mean"] - 1) < 0.2, pair
        assert null["ci_low"] < 1 < null["ci_high"], pair  # never "reproduced" at a 1.5 floor


def test_prefix_reuse_gives_the_full_rerun_numbers(tiny_model) -> None:
    """Resuming after the hook (blocks before it replayed) equals re-running the whole model."""
    hook = "blocks.0.hook_resid_post"  # the tiny model's block 1 runs after it
    rng = np.random.default_rng(3)
    contexts = rng.integers(0, 256, (6, 24))
    sae = random_sae(32, 64, seed=7)
    sets = {"some": np.arange(0, 64, 3), "all_features": np.arange(64)}
    full = masking.spliced_loss(*masking.bridge_runners(tiny_model.bridge, hook,
                                                        reuse_prefix=False),
                                sae, contexts, sets, batch_size=4)
    calls: list[int] = []
    handle = tiny_model.bridge.blocks[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    try:
        reused = masking.spliced_loss(*masking.bridge_runners(tiny_model.bridge, hook), sae,
                                      contexts, sets, batch_size=4)
    finally:
        handle.remove()
    # block 0 ran in the two clean runs and the one check against a full re-run, not per
    # condition (2 batches x 3 sets x 2 error modes)
    assert len(calls) == 3
    for col in ("ce", "delta_ce", "kl"):
        np.testing.assert_allclose(reused[col], full[col], rtol=0, atol=1e-5)
    assert full.loc[full["set"] == "all_features", "kl"].min() > 1e-3  # the patch mattered
    # after the runs the blocks compute again: a fresh clean run is the model's own
    with torch.no_grad():
        logits = tiny_model.bridge(torch.from_numpy(contexts))
        direct, _ = tiny_model.bridge.run_with_cache(torch.from_numpy(contexts))
    torch.testing.assert_close(logits, direct)


def test_prefix_reuse_falls_back_when_the_resumed_run_differs(tiny_model, monkeypatch,
                                                              caplog) -> None:
    hook = "blocks.0.hook_resid_post"
    contexts = np.random.default_rng(4).integers(0, 256, (4, 16))
    sae = random_sae(32, 64, seed=8)
    sets = {"some": np.arange(0, 64, 5)}
    full = masking.spliced_loss(*masking.bridge_runners(tiny_model.bridge, hook,
                                                        reuse_prefix=False),
                                sae, contexts, sets, batch_size=2)
    resume = masking._resume
    monkeypatch.setattr(masking, "_resume", lambda *a: resume(*a) * 2)
    with caplog.at_level("WARNING"):
        broken = masking.spliced_loss(*masking.bridge_runners(tiny_model.bridge, hook), sae,
                                      contexts, sets, batch_size=2)
    assert "re-running the whole model" in caplog.text
    np.testing.assert_allclose(broken["ce"], full["ce"], rtol=0, atol=1e-5)


def test_run_masking_spliced_loss_fills_the_c3_block(tmp_path: Path, tiny_model) -> None:
    hook = "blocks.1.hook_resid_post"
    rng = np.random.default_rng(5)
    contexts = rng.integers(0, 256, (12, 16))
    cache = write_cache(tmp_path / "cache", tiny_model.forward_fn(hook), contexts, d=32,
                        bos_token_id=None, outlier_factor=None)
    saes = {s: random_sae(32, 48, seed=20 + s) for s in range(3)}
    rows = []
    for s in range(3):
        labels = rng.choice(["stable", "unstable", "dead"], size=48, p=[0.3, 0.6, 0.1])
        rows.append(census_rows(s, labels, rng.uniform(1, 2, 48), rng.uniform(1, 4, 48)))
    table, summary = masking.run_masking(
        {s: s for s in range(3)}, pd.concat(rows), cache, anchors=[0, 1, 2],
        runners=masking.bridge_runners(tiny_model.bridge, hook), ce_contexts=contexts[:4],
        load=lambda s: saes[s], ce_batch_size=2)
    by = table.set_index(["seed", "set"])
    assert np.allclose(by.xs("none", level="set")["delta_ce_err"], 0, atol=1e-6)
    # without the error term only the main sets are measured; with it, every set
    for name in masking.SET_ORDER:
        measured = by.xs(name, level="set")
        assert measured["delta_ce_err"].notna().all(), name
        assert measured["delta_ce_noerr"].notna().all() == (name in masking.RECONSTRUCTION_ONLY)
    for pair, (first, second) in masking.PAIRS.items():
        block = pair_block(summary["c3"], pair)["delta_ce_err"]
        assert block["stable"] == [by.loc[(s, first), "delta_ce_err"] for s in range(3)]
        assert block["matched"] == [by.loc[(s, second), "delta_ce_err"] for s in range(3)]
        assert np.isfinite(block["ratio"]["mean"]) and block["ratio"]["n"] == 3


def test_energy_matching_removes_the_advantage_of_fewer_larger_activations(
        tmp_path: Path) -> None:
    """Stable features fire rarely and strongly, unstable ones often and weakly, with the same L1
    mass per feature and the same signal per unit of energy. Mass matching then removes ~10x more
    energy on the stable side (a large ratio for the wrong reason); energy matching does not."""
    d = 48
    rng = np.random.default_rng(0)
    sparse = (rng.random((300, d // 2)) < 0.1) * rng.standard_normal((300, d // 2)) * 10
    dense = rng.standard_normal((300, d // 2))
    table = torch.from_numpy(np.concatenate([sparse, dense], 1).astype(np.float32))
    caches = {split: write_cache(tmp_path / split, lambda ids: table[ids],
                                 np.random.default_rng(i).integers(0, 300, (60, 16)), d=d,
                                 bos_token_id=None, outlier_factor=None)
              for i, split in enumerate(("train", "eval"))}
    sae = identity_sae(d)
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(caches["train"].load())).double()
    norms = sae.W_dec.detach().double().norm(dim=1)
    mass, energy = (f.sum(0) * norms).numpy(), (f.pow(2).sum(0) * norms**2).numpy()
    labels = np.tile(np.r_[["stable"] * (d // 2), ["unstable"] * (d // 2)], 2)
    stable = labels == "stable"
    assert 0.7 < mass[stable].mean() / mass[~stable].mean() < 1.4  # equal mass per feature
    assert energy[stable].mean() / energy[~stable].mean() > 5  # far more energy per feature
    n = 6
    rows = pd.concat([census_rows(s, labels, mass, energy) for s in range(n)])
    _, summary = masking.run_masking({s: s for s in range(n)}, rows, caches["eval"],
                                     anchors=list(range(n)), load=lambda _: sae, seed=1)
    by_mass = summary["c3"]["mass"]["delta_ev"]["ratio"]
    by_energy = summary["c3"]["energy"]["delta_ev"]["ratio"]
    assert by_mass["ci_low"] > 3
    assert 0.6 < by_energy["mean"] < 1.4 and by_energy["ci_low"] < 1.5
    assert max(summary["c3"]["match_error"]["energy"]) < 0.15


@pytest.fixture(scope="module")
def llama_bridge(tmp_path_factory: pytest.TempPathFactory):
    """A 4-layer Llama (SmolLM2's architecture) with random weights and a word-level tokenizer,
    booted offline through the same TransformerBridge path as the hub and GGUF models."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    hf.config.save_pretrained(d)
    words = Tokenizer(WordLevel({f"w{i}": i for i in range(300)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="w1", eos_token="w2",
                            unk_token="w0", pad_token="w3").save_pretrained(d)
    return TransformerBridge.boot_transformers(str(d), hf_model=hf,
                                               tokenizer=AutoTokenizer.from_pretrained(d))


def test_prefix_reuse_on_a_hf_llama_bridge(llama_bridge) -> None:
    hook = "blocks.1.hook_resid_post"
    contexts = np.random.default_rng(6).integers(4, 300, (4, 20))
    sae = random_sae(64, 96, seed=9)
    sets = {"some": np.arange(0, 96, 4), "all_features": np.arange(96)}
    full = masking.spliced_loss(*masking.bridge_runners(llama_bridge, hook, reuse_prefix=False),
                                sae, contexts, sets, batch_size=2)
    calls: list[int] = []
    handle = llama_bridge.blocks[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    try:
        reused = masking.spliced_loss(*masking.bridge_runners(llama_bridge, hook), sae,
                                      contexts, sets, batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 3  # two clean runs and the one check, not once per condition
    for col in ("ce", "delta_ce", "kl"):
        np.testing.assert_allclose(reused[col], full[col], rtol=0, atol=1e-5)
    assert full.loc[full["set"] == "all_features", "kl"].min() > 1e-3
