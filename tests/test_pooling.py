"""Feature pools: seed subsets, within-pool stability, greedy de-duplication, assembly,
post-training from given tensors, and one configuration end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saestab import matching, pooling
from saestab.activations import ActivationCache, write_cache
from saestab.evaluation import evaluate_sae, write_evaluation
from saestab.sae import SAE, SAEConfig, sae_from_tensors
from saestab.training import RunOptions, TrainConfig, train_group

D, N_DIRS = 16, 24


def random_sae(arch: str, m: int = 12, d: int = D, seed: int = 0, k: int = 3,
               scale: float = 1.0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(m, d, generator=g)
    if arch != "relu":
        w_dec /= w_dec.norm(dim=1, keepdim=True)
    t = {"W_enc": torch.randn(d, m, generator=g) * 0.5, "W_dec": w_dec,
         "b_enc": torch.randn(m, generator=g) * 0.1 * scale,
         "b_dec": torch.randn(d, generator=g) * scale}
    if arch in ("batchtopk", "jumprelu", "matryoshka"):
        t["threshold"] = torch.rand(m, generator=g) * 0.2 * scale
    cfg = SAEConfig(architecture=arch, d_in=d, d_sae=m, k=k if arch == "topk" else None,
                    recipe={"lr": 1e-3}, seeds={"init_seed": seed})
    return sae_from_tensors(cfg, t)


def naive_greedy(dirs: np.ndarray, order: np.ndarray, theta: float, limit: int) -> list[int]:
    u = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    kept: list[int] = []
    for i in order:
        if all(float(u[i] @ u[j]) < theta for j in kept):
            kept.append(int(i))
            if len(kept) == limit:
                break
    return kept


# -- units --------------------------------------------------------------------------------------
def test_split_seeds() -> None:
    assert pooling.split_seeds(range(6), 2) == [[0, 1, 2], [3, 4, 5]]
    assert pooling.split_seeds([0, 1, 2], 2) == [[0, 1], [2]]
    assert pooling.split_seeds([5, 7], 1) == [[5, 7]]
    with pytest.raises(ValueError):
        pooling.split_seeds(range(2), 3)
    with pytest.raises(ValueError):
        pooling.split_seeds([1, 1], 1)


def test_within_pool_stability_reads_only_the_pool() -> None:
    """Counts among the pool's own seeds; changing another pool's seeds changes nothing."""
    S, m = 5, 4
    maxcos = np.full((S, S, m), 0.1, dtype=np.float16)
    for a in range(S):
        maxcos[a, a] = 1.0
    maxcos[0, 1, 0] = maxcos[0, 2, 0] = 0.9  # seed 0 feature 0 reappears in 1 and 2
    maxcos[0, 1, 1] = 0.75  # feature 1 in seed 1 only
    maxcos[2, 0, 3] = 0.69  # below theta
    maxcos[0, 3, 2] = maxcos[0, 4, 2] = 0.99  # feature 2 reappears only outside the pool
    st = pooling.within_pool_stability(maxcos, [0, 1, 2], 0.7)
    assert st.shape == (3, m)
    np.testing.assert_allclose(st[0], [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(st[2], [0.0, 0.0, 0.0, 0.0])
    other = maxcos.copy()
    other[3:, :] = 1.0
    other[:, 3:] = 1.0
    np.testing.assert_array_equal(pooling.within_pool_stability(other, [0, 1, 2], 0.7), st)
    assert not np.array_equal(pooling.within_pool_stability(other, [0, 3], 0.7)[0],
                              pooling.within_pool_stability(maxcos, [0, 3], 0.7)[0])
    np.testing.assert_array_equal(pooling.within_pool_stability(maxcos, [4], 0.7), np.zeros((1, m)))


def test_split_intervals_average_the_splits() -> None:
    splits = [{"mutual_stability_pool_after": v, "mutual_stability_standard": 0.4,
               "ev_pool_after": 0.7, "ev_standard": 0.75} for v in (0.5, 0.6, 0.7)]
    out = pooling.split_intervals(splits)
    assert set(out["mutual_stability"]) == {"pool_after", "standard"}
    ms = out["mutual_stability"]["pool_after"]
    assert ms["mean"] == pytest.approx(0.6) and ms["n"] == 3
    assert ms["ci_low"] < 0.5 and ms["ci_high"] > 0.7  # t with 2 degrees of freedom
    assert out["ev"]["standard"]["ci_high"] == pytest.approx(0.75)


def test_rank_candidates() -> None:
    st = np.array([[0.5, 1.0, 0.0], [1.0, 0.5, 0.5]])
    mass = np.array([[9.0, 1.0, 5.0], [2.0, 9.0, 9.0]])
    # stability first (1.0: (0,1) m=1, (1,0) m=2), then mass, then (member, feature)
    assert pooling.rank_candidates(st, mass).tolist() == [3, 1, 0, 4, 5, 2]


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_greedy_unique_matches_the_one_by_one_loop(block: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, D))
    dup = base[rng.integers(0, 40, 60)] + 0.3 * rng.standard_normal((60, D))  # near-duplicates
    dirs = np.concatenate([base, dup]).astype(np.float32)
    order = rng.permutation(len(dirs))
    for theta, limit in ((0.7, None), (0.9, None), (0.7, 25)):
        got = pooling.greedy_unique(dirs, order, theta, limit=limit, block=block)
        want = naive_greedy(dirs, order, theta, limit or len(dirs))
        assert got.tolist() == want
        u = dirs[got] / np.linalg.norm(dirs[got], axis=1, keepdims=True)
        c = u @ u.T
        np.fill_diagonal(c, 0)
        assert c.max() < theta
    assert 40 <= len(pooling.greedy_unique(dirs, order, 0.7)) < 100


# -- assembly ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_pooling_an_sae_with_itself_gives_its_features_once(arch: str) -> None:
    sae = random_sae(arch, m=12)
    m = sae.cfg.d_sae
    rng = np.random.default_rng(1)
    mass = rng.random((1, m)).repeat(2, axis=0)
    pool = pooling.assemble_pool([sae, sae], np.ones((2, m)), mass, theta=0.7, seeds=[4, 4])
    assert pool.n_unique == m and pool.n_filled == 0 and pool.n_candidates == 2 * m
    mem = pool.members
    assert sorted(mem["feature"].tolist()) == list(range(m))  # every feature exactly once
    assert (mem["source"] == 0).all()  # ties go to the first copy
    assert mem["mass"].is_monotonic_decreasing
    perm = torch.from_numpy(mem["feature"].to_numpy().copy())
    p = pool.sae
    assert torch.equal(p.W_dec, sae.W_dec[perm]) and torch.equal(p.W_enc, sae.W_enc[:, perm])
    assert torch.allclose(p.b_dec, sae.b_dec) and torch.allclose(p.b_enc, sae.b_enc[perm])
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(p.encode(x), sae.encode(x)[:, perm], atol=1e-5)
        assert torch.allclose(p(x), sae(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "relu"])
def test_pooled_features_keep_their_pre_activations(arch: str) -> None:
    """b_dec becomes the mean of the sources'; b_enc is shifted so every pre-activation stays."""
    a, b = random_sae(arch, seed=1, scale=3.0), random_sae(arch, seed=2, scale=3.0)
    m = a.cfg.d_sae
    st = np.zeros((2, m))
    mass = np.arange(2 * m, dtype=float).reshape(2, m)[::-1].copy()
    pool = pooling.assemble_pool([a, b], st, mass, theta=0.99)
    assert torch.allclose(pool.sae.b_dec, (a.b_dec + b.b_dec) / 2)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pre = pool.sae.pre_activations(x)
        for slot, (src, feat) in enumerate(zip(pool.members["source"], pool.members["feature"],
                                               strict=True)):
            ref = (a, b)[src].pre_activations(x)[:, feat]
            assert torch.allclose(pre[:, slot], ref, atol=1e-4)
    # highest mass first: all of a's features (mass 2m-1 .. m) before any of b's
    assert pool.members["source"].tolist() == [0] * m


def test_too_few_unique_features_are_filled_with_duplicates() -> None:
    sae = random_sae("topk", m=12)
    w = sae.W_dec.detach().clone()
    w[6:] = w[:6] + 0.01 * torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    w /= w.norm(dim=1, keepdim=True)
    t = sae.state_tensors()
    t["W_dec"] = w
    twin = sae_from_tensors(sae.cfg, t)  # 6 unique directions, each twice
    pool = pooling.assemble_pool([twin, twin], np.ones((2, 12)), np.ones((2, 12)), theta=0.7)
    assert pool.n_unique == 6 and pool.n_filled == 6
    assert pool.sae.cfg.d_sae == 12
    assert pool.members["unique"].tolist() == [True] * 6 + [False] * 6
    assert pool.sae.cfg.recipe["pool"]["n_filled"] == 6
    with pytest.raises(ValueError):
        pooling.assemble_pool([twin, random_sae("relu", m=12)], np.ones((2, 12)),
                              np.ones((2, 12)), 0.7)


# -- post-training from given tensors ------------------------------------------------------------
def planted_cache(path: Path, seed: int, scale: float = 30.0, n_ctx: int = 96) -> ActivationCache:
    """Each token is a positive combination of 2 of N_DIRS fixed directions (far from unit
    scale, so that the trainer's normalisation matters)."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(0).standard_normal((N_DIRS, D)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    vocab = 2048
    table = np.zeros((vocab, D), np.float32)
    for v in range(vocab):
        j = rng.choice(N_DIRS, 2, replace=False)
        table[v] = (dirs[j] * rng.uniform(0.5, 2.0, (2, 1))).sum(0) * scale
    tab = torch.from_numpy(table)
    return write_cache(path, lambda ids: tab[ids], rng.integers(0, vocab, (n_ctx, 32)), d=D,
                       bos_token_id=None, outlier_factor=None)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ActivationCache]:
    root = tmp_path_factory.mktemp("pool")
    return {"train": planted_cache(root / "train", 1), "eval": planted_cache(root / "eval", 2)}


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_training_from_given_tensors_round_trips(caches, arch: str) -> None:
    """With a zero learning rate, continued training returns the given SAE (the trainer's
    input normalisation is undone exactly), and the init label is recorded."""
    sae = random_sae(arch, m=12, scale=30.0)
    cfg = TrainConfig(architecture=arch, d_sae=12, k=3, lr=0.0, batch_size=128, n_tokens=3 * 128,
                      warmup_steps=0, l1_coefficient=0.1, l1_warmup_steps=0)
    out = train_group(caches["train"], cfg, [0], 0, RunOptions(snapshots_at_epochs=()),
                      init=[sae.state_tensors()]).saes[0]
    for name, t in sae.state_tensors().items():
        assert torch.allclose(out.state_tensors()[name], t, rtol=1e-5, atol=1e-5), name
    assert out.cfg.seeds["init"] == "given"
    with pytest.raises(ValueError, match="initial SAEs"):
        train_group(caches["train"], cfg, [0, 1], 0, init=[sae.state_tensors()])


def test_post_training_recovers_a_perturbed_sae(caches) -> None:
    trained = train_group(caches["train"], TrainConfig(architecture="topk", d_sae=32, k=2,
                                                       lr=3e-3, batch_size=128, n_epochs=4.0,
                                                       warmup_steps=5),
                          [0], 0, RunOptions(snapshots_at_epochs=())).saes[0]
    t = trained.state_tensors()
    t["W_enc"] = t["W_enc"] + t["W_enc"].std() * torch.randn(
        D, 32, generator=torch.Generator().manual_seed(0))
    hurt = sae_from_tensors(trained.cfg, t)
    cfg = pooling.post_train_config({"architecture": "topk", "d_sae": 32, "k": 2, "lr": 3e-3,
                                     "batch_size": 128, "n_epochs": 4.0}, 20 * 128, 10)
    assert cfg.n_tokens == 20 * 128 and cfg.n_epochs is None and cfg.warmup_steps == 2
    fixed = pooling.post_train([hurt], caches["train"], cfg).saes[0]
    ev = [evaluate_sae(s, caches["eval"])["ev"] for s in (trained, hurt, fixed)]
    assert ev[1] < ev[0] - 0.02 and ev[2] > ev[1] + 0.01, ev
    assert fixed.cfg.recipe["post_training"]["steps"] == 20


def test_post_training_starts_from_the_reached_coefficient() -> None:
    """A recipe steered to a target L0 continues from the coefficient its SAEs reached (their
    geometric mean), not from the recipe's starting point; a fixed coefficient is kept."""
    recipes = [{"target_l0_reached": {"coefficient": c, "train_l0": 32.0}} for c in (0.02, 0.08)]
    assert pooling.reached_coefficient(recipes) == pytest.approx(0.04)
    assert pooling.reached_coefficient([{"l1_coefficient": 0.2}]) is None
    steered = {"architecture": "relu", "d_sae": 32, "target_l0": 4, "batch_size": 128,
               "n_epochs": 2}
    cfg = pooling.post_train_config(steered, 10 * 128, 2, coefficient=0.04)
    assert cfg.l1_coefficient == 0.04 and cfg.target_l0 == 4 and cfg.l1_warmup_steps == 0
    jump = pooling.post_train_config({**steered, "architecture": "jumprelu"}, 10 * 128, 2,
                                     coefficient=0.003)
    assert jump.l0_coefficient == 0.003
    fixed = pooling.post_train_config({**steered, "target_l0": None, "l1_coefficient": 0.2},
                                      10 * 128, 2, coefficient=0.04)
    assert fixed.l1_coefficient == 0.2


def test_post_train_length_rule() -> None:
    recipe = {"architecture": "topk", "d_sae": 32, "k": 2, "batch_size": 100, "n_epochs": 8}
    assert pooling.training_tokens(recipe, 1000) == 8000
    assert pooling.post_train_tokens(recipe, 1000, 0.05) == 400
    assert pooling.post_train_tokens(recipe, 1000, 0.001) == 100  # at least one batch
    assert pooling.post_train_tokens(recipe, 1000, 0.05, tokens=777) == 777
    c = pooling.post_train_config({**recipe, "lr": 0.01}, 1000, 10, lr_scale=0.3)
    assert c.lr == pytest.approx(0.003) and c.warmup_steps == 1


# -- one configuration end to end -----------------------------------------------------------------
def test_run_pools(caches, tmp_path: Path) -> None:
    recipe = {"architecture": "topk", "d_sae": 32, "k": 2, "lr": 3e-3, "batch_size": 128,
              "n_epochs": 3.0, "warmup_steps": 5}
    seeds = [0, 1, 2, 3]
    dirs = [tmp_path / "saes" / f"seed{s}" for s in seeds]
    res = train_group(caches["train"], TrainConfig(**recipe), seeds, 0,
                      RunOptions(out_dirs=dirs, snapshots_at_epochs=()))
    for sae, d in zip(res.saes, dirs, strict=True):
        write_evaluation(evaluate_sae(sae, caches["eval"]), d)
    maxcos, _ = matching.pairwise_max_cosine([s.decoder_directions() for s in res.saes])
    study = pooling.run_pools(dirs, maxcos, caches["train"], caches["eval"], recipe, theta=0.7,
                              n_pools=2, post_tokens=4 * 128, warmup_steps=2, mass_tokens=1000)
    s = study.summary
    assert s["subsets"] == [[0, 1], [2, 3]]
    # like-for-like standard comparison: every cross-subset pair of seeds, both directions
    want = np.mean([(maxcos[a, b].astype(np.float32) >= 0.7).mean()
                    for a, b in ((0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (2, 1), (3, 0), (3, 1))])
    assert s["mutual_stability"]["standard"]["mean"] == pytest.approx(want)
    assert s["mutual_stability"]["standard"]["n"] == 8
    assert s["mutual_stability"]["pool_after"]["n"] == 2
    pa = study.cross.query("kind == 'pool_before' and a == 0")["max_cos"].to_numpy()
    np.testing.assert_allclose(pa, pooling.cross_max_cosine(study.pools[0].sae,
                                                            study.pools[1].sae), atol=1e-6)
    assert s["ev"]["standard"]["n"] == 4 and s["ev"]["pool_after"]["n"] == 2
    assert 0.5 < s["ev"]["pool_after"]["mean"] <= 1.0
    assert all(p["n_unique"] >= 1 for p in s["pools"])
    pooling.write_pools(study, tmp_path / "out", tmp_path / "out" / "saes")
    for f in ("summary.json", "pool_table.csv", "cross_maxcos.parquet", "evals.csv",
              "saes/pool0/before/cfg.json", "saes/pool1/after/eval.json",
              "saes/pool0/members.parquet", "saes/continued1/eval.json"):
        assert (tmp_path / "out" / f).is_file(), f
