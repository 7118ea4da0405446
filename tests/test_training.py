"""The multi-seed SAE trainer: recipes, reproducibility, resumption, snapshots, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saestab import io, training
from saestab.activations import ActivationCache, write_cache
from saestab.evaluation import evaluate_sae
from saestab.sae import SAE, load_sae, sae_from_tensors
from saestab.training import TrainConfig, train_group

D, N_DIRS, VOCAB = 24, 16, 4096


def true_directions() -> np.ndarray:
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((N_DIRS, D)).astype(np.float32)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def make_cache(path: Path, seed: int, scale: float = 1.0, n_ctx: int = 128,
               t: int = 32) -> ActivationCache:
    """Each token's activation is a positive combination of 2 of the N_DIRS true directions
    (a lookup table over the vocabulary; ``seed`` draws a fresh table and fresh contexts)."""
    rng = np.random.default_rng(seed)
    dirs = true_directions()
    table = np.zeros((VOCAB, D), np.float32)
    for v in range(VOCAB):
        j = rng.choice(N_DIRS, 2, replace=False)
        table[v] = (dirs[j] * rng.uniform(0.5, 2.0, (2, 1))).sum(0)
    tab = torch.from_numpy(table * scale)
    contexts = rng.integers(0, VOCAB, (n_ctx, t))
    return write_cache(path, lambda ids: tab[ids], contexts, d=D, bos_token_id=None,
                       outlier_factor=None)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ActivationCache]:
    root = tmp_path_factory.mktemp("train")
    return {"train": make_cache(root / "train", seed=1),
            "held_out": make_cache(root / "held_out", seed=2),
            "big": make_cache(root / "big", seed=1, scale=40.0, n_ctx=32)}


def cfg(**kw) -> TrainConfig:
    base = {"architecture": "topk", "d_sae": 32, "k": 2, "batch_size": 128, "n_epochs": 1.0,
            "warmup_steps": 5, "lr": 3e-3}
    base.update(kw)
    return TrainConfig(**base)


def all_tensors(saes: list[SAE]) -> list[dict[str, torch.Tensor]]:
    return [s.state_tensors() for s in saes]


def assert_identical(a: list[SAE], b: list[SAE]) -> None:
    for ta, tb in zip(all_tensors(a), all_tensors(b), strict=True):
        assert ta.keys() == tb.keys()
        for name in ta:
            assert torch.equal(ta[name], tb[name]), name


# -- units -------------------------------------------------------------------------------------
def test_epoch_order_and_schedules() -> None:
    o = training.epoch_order(7, 0, 1000)
    assert sorted(o.tolist()) == list(range(1000))
    assert np.array_equal(o, training.epoch_order(7, 0, 1000))
    assert not np.array_equal(o, training.epoch_order(7, 1, 1000))
    assert not np.array_equal(o, training.epoch_order(8, 0, 1000))
    c = cfg(lr=1.0, warmup_steps=10, lr_decay_fraction=0.2)
    assert training.lr_at(c, 0, 100) == pytest.approx(0.1)
    assert training.lr_at(c, 9, 100) == pytest.approx(1.0)
    assert training.lr_at(c, 79, 100) == pytest.approx(1.0)
    assert training.lr_at(c, 80, 100) == pytest.approx(1.0)
    assert training.lr_at(c, 90, 100) == pytest.approx(0.5)
    assert training.lr_at(c, 99, 100) == pytest.approx(0.05)
    r = cfg(architecture="relu", l1_coefficient=2.0, l1_warmup_steps=4)
    assert training.sparsity_coefficient_at(r, 0) == pytest.approx(0.5)
    assert training.sparsity_coefficient_at(r, 10) == pytest.approx(2.0)


def test_config_defaults_and_validation() -> None:
    c = TrainConfig(d_sae=2**14, k=32).resolved(576, 200_000, torch.device("cpu"))
    assert TrainConfig(n_tokens=1000).resolved(8, 100, torch.device("cpu")).n_tokens == 1000
    assert c.lr == pytest.approx(2e-4)
    assert c.aux_k == 288 and c.n_tokens == 8 * 200_000 and c.n_epochs is None
    assert c.parallel == "loop" and c.decode == "sparse"
    assert TrainConfig(d_sae=64, k=4).resolved(8, 100, torch.device("cuda")).parallel == "stacked"
    m = TrainConfig(architecture="matryoshka", d_sae=1152, k=32).resolved(576, 10**5,
                                                                          torch.device("cpu"))
    assert sum(m.matryoshka_groups) == 1152 and m.decode == "dense" and m.parallel == "stacked"
    with pytest.raises(ValueError):
        TrainConfig(architecture="matryoshka", d_sae=64, k=4, matryoshka_groups=[16, 16])
    with pytest.raises(ValueError):
        TrainConfig(n_epochs=1.0, n_tokens=100)
    with pytest.raises(ValueError):
        TrainConfig(architecture="topk", d_sae=8, k=9)


def test_jumprelu_pseudo_gradients() -> None:
    """Rectangle-kernel straight-through gradients for the threshold (Rajamanoharan et al.)."""
    z = torch.tensor([[0.05, 0.13, 0.30, 0.095], [0.11, -1.0, 0.5, 0.2]], requires_grad=True)
    theta = torch.tensor([[0.1, 0.1, 0.1, 0.1]], requires_grad=True)
    eps = 0.04
    f = training._JumpReLU.apply(z, theta, eps)
    assert torch.equal(f.detach(), torch.where(z > theta, z, 0.0).detach())
    f.sum().backward()
    assert torch.equal(z.grad, (z > theta).float())
    # |z - theta| < eps/2 = 0.02 only at (0, 3) and (1, 0)
    in_window = torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0]])
    assert torch.allclose(theta.grad, -(theta / eps) * in_window.sum(0, keepdim=True))
    theta.grad = None
    z.grad = None
    training._Step.apply(z, theta, eps).sum().backward()
    assert z.grad is None or not z.grad.any()
    assert torch.allclose(theta.grad, -(1 / eps) * in_window.sum(0, keepdim=True))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_path_matches_dense(arch: str) -> None:
    """The CSR forward/backward gives the dense path's loss and gradients (AuxK included)."""
    g = torch.Generator().manual_seed(0)
    c = cfg(architecture=arch, d_sae=48, k=3, aux_k=5).resolved(D, 1000, torch.device("cpu"))
    b_dec = torch.randn(D, generator=g) * 0.1
    params = training._init_params(c, D, 11, b_dec, torch.device("cpu"))
    params["b_enc"] = torch.randn(48, generator=g) * 0.05
    x = torch.randn(64, D, generator=g) / D**0.5
    dead = torch.zeros(1, 48, dtype=torch.bool)
    dead[0, ::3] = True
    grads = []
    for step_fn in (training._sparse_block_step, training._dense_block_step):
        p = {n: t.unsqueeze(0).clone().requires_grad_(True) for n, t in params.items()}
        args = (c, p, x, dead) if step_fn is training._sparse_block_step else (c, p, x, dead, 0.)
        out = step_fn(*args)
        out.loss.backward()
        grads.append((out, {n: t.grad for n, t in p.items()}))
    (so, sg), (do, dg) = grads
    assert float(so.aux) > 0
    assert torch.allclose(so.loss, do.loss, rtol=1e-5)
    assert torch.allclose(so.l0, do.l0) and torch.equal(so.fired, do.fired)
    for n in sg:
        assert torch.allclose(sg[n], dg[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_stacked_matches_loop(caches, arch: str) -> None:
    """The batched (GPU) layout computes the same models as the per-seed loop."""
    kw = {"architecture": arch, "n_epochs": None, "n_tokens": 12 * 128, "decode": "dense",
          "dead_steps": 4, "matryoshka_groups": [8, 8, 16] if arch == "matryoshka" else None}
    a = train_group(caches["train"], cfg(parallel="stacked", **kw), [1, 2], 0,
                    snapshots_at_epochs=())
    b = train_group(caches["train"], cfg(parallel="loop", **kw), [1, 2], 0,
                    snapshots_at_epochs=())
    for ta, tb in zip(all_tensors(a.saes), all_tensors(b.saes), strict=True):
        for n in ta:
            assert torch.allclose(ta[n], tb[n], rtol=1e-3, atol=1e-5), n


# -- seeds, reproducibility, resumption -----------------------------------------------------------
def test_seeds(caches) -> None:
    c = cfg(n_epochs=None, n_tokens=10 * 128)
    a = train_group(caches["train"], c, [3, 4], data_seed=0, snapshots_at_epochs=())
    b = train_group(caches["train"], c, [3, 4], data_seed=0, snapshots_at_epochs=())
    assert_identical(a.saes, b.saes)
    # different init seeds never share an initialisation or an outcome
    assert not torch.allclose(a.saes[0].W_dec, a.saes[1].W_dec)
    inits = [training._init_params(c.resolved(D, 100, torch.device("cpu")), D, s,
                                   torch.zeros(D), torch.device("cpu")) for s in (3, 4)]
    assert not torch.equal(inits[0]["W_dec"], inits[1]["W_dec"])
    assert torch.equal(inits[0]["W_enc"], inits[0]["W_dec"].T)
    assert torch.allclose(inits[0]["W_dec"].norm(dim=1), torch.ones(32))
    # a seed's model does not depend on which other seeds share its group
    other = train_group(caches["train"], c, [3, 9], data_seed=0, snapshots_at_epochs=())
    assert_identical(a.saes[:1], other.saes[:1])
    # the data seed changes the outcome
    d = train_group(caches["train"], c, [3, 4], data_seed=1, snapshots_at_epochs=())
    assert not torch.equal(a.saes[0].W_dec, d.saes[0].W_dec)
    with pytest.raises(ValueError, match="differ"):
        train_group(caches["train"], c, [3, 3], data_seed=0)
    assert a.saes[0].cfg.seeds == {"init_seed": 3, "data_seed": 0}


class Kill(Exception):
    pass


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_resume_is_bit_identical(caches, tmp_path: Path, arch: str) -> None:
    c = cfg(architecture=arch, n_epochs=None, n_tokens=40 * 128, dead_steps=5)
    full = train_group(caches["train"], c, [1, 2], 0, snapshots_at_epochs=())

    def die(step: int) -> None:
        if step == 17:
            raise Kill

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Kill):
        train_group(caches["train"], c, [1, 2], 0, checkpoint_dir=ckpt, checkpoint_every=5,
                    callback=die, snapshots_at_epochs=())
    state = json.loads((ckpt / "checkpoint" / "state.json").read_text())
    assert state["step"] == 15
    assert "adam_m.W_dec" in load_file(str(ckpt / "checkpoint" / "state.safetensors"))
    out = [tmp_path / "s1", tmp_path / "s2"]
    resumed = train_group(caches["train"], c, [1, 2], 0, out_dirs=out, checkpoint_dir=ckpt,
                          checkpoint_every=5, snapshots_at_epochs=())
    assert resumed.resumed_from == 15 and resumed.steps == 40
    assert_identical(full.saes, resumed.saes)
    assert_identical(full.saes, [load_sae(p) for p in out])
    assert not (ckpt / "checkpoint").exists()  # removed after success


def test_checkpoint_of_another_run_is_refused(caches, tmp_path: Path) -> None:
    c = cfg(n_epochs=None, n_tokens=10 * 128)
    with pytest.raises(Kill):
        train_group(caches["train"], c, [1, 2], 0, checkpoint_dir=tmp_path, checkpoint_every=2,
                    callback=lambda s: (_ for _ in ()).throw(Kill) if s == 3 else None)
    with pytest.raises(io.InputError, match="different recipe"):
        train_group(caches["train"], c, [1, 3], 0, checkpoint_dir=tmp_path)


# -- what the recipes learn ----------------------------------------------------------------
def max_cosines(sae: SAE) -> torch.Tensor:
    return (torch.from_numpy(true_directions()) @ sae.decoder_directions().T).max(1).values


def test_topk_recovers_true_directions(caches, tmp_path: Path) -> None:
    out = [tmp_path / "seed1", tmp_path / "seed2"]
    res = train_group(caches["train"], cfg(lr=1e-2, n_epochs=6.0, d_sae=48), [1, 2], 0,
                      out_dirs=out, snapshots_at_epochs=(1, 2, 4, 8))
    held = caches["held_out"]
    for sae in res.saes:
        cos = max_cosines(sae)
        assert cos.min() >= 0.9, cos
        l0 = (sae.encode(torch.from_numpy(held.load())) > 0).sum(1)
        assert l0.max() == 2 and (l0 == 2).float().mean() > 0.99  # TopK: exactly k
        assert evaluate_sae(sae, held)["ev"] > 0.8
    # snapshots after 1, 2 and 4 epochs (not 8: the run has 6); each is the SAE of that moment
    spe = caches["train"].n_tokens // 128
    for e in (1, 2, 4):
        snap = load_sae(tmp_path / "snapshots" / f"epoch{e}" / "seed2")
        assert snap.cfg.recipe["steps"] == e * spe
    assert not (tmp_path / "snapshots" / "epoch8").exists()
    early = load_sae(tmp_path / "snapshots" / "epoch1" / "seed1")
    assert not torch.equal(early.W_dec, res.saes[0].W_dec)
    assert max_cosines(early).mean() < max_cosines(res.saes[0]).mean()
    saved = json.loads((out[0] / "cfg.json").read_text())
    assert saved["recipe"]["lr"] == 1e-2 and saved["seeds"] == {"init_seed": 1, "data_seed": 0}
    assert json.loads((out[0] / "training.json").read_text())["steps"] == 6 * spe


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_l0(caches, arch: str) -> None:
    c = cfg(architecture=arch, lr=1e-2, n_epochs=4.0, k=2,
            matryoshka_groups=[4, 12, 16] if arch == "matryoshka" else None)
    res = train_group(caches["train"], c, [1], 0, snapshots_at_epochs=(), log_every=8)
    train_l0 = [h["l0"] for h in res.history]
    assert np.mean(train_l0[-4:]) == pytest.approx(2.0, abs=0.02)  # k*B kept per batch
    sae = res.saes[0]
    assert float(sae.threshold.min()) > 0
    held = evaluate_sae(sae, caches["held_out"])
    assert held["l0"] == pytest.approx(2.0, rel=0.2)  # the inference threshold keeps ~k
    assert held["ev"] > 0.6


@pytest.mark.parametrize("arch,key,values", [("relu", "l1_coefficient", (0.01, 0.2)),
                                             ("jumprelu", "l0_coefficient", (1e-4, 1e-2))])
def test_sparsity_penalty_orders_l0(caches, arch: str, key: str, values) -> None:
    l0 = []
    for v in values:
        c = cfg(architecture=arch, lr=2e-2, n_epochs=2.0, k=None, l1_warmup_steps=10,
                jumprelu_bandwidth=0.05, jumprelu_init_threshold=0.05, **{key: v})
        sae = train_group(caches["train"], c, [1], 0, snapshots_at_epochs=()).saes[0]
        l0.append(evaluate_sae(sae, caches["held_out"])["l0"])
    assert l0[1] < 0.8 * l0[0], l0


def test_normalisation_is_folded_into_saved_weights(caches, tmp_path: Path) -> None:
    """Snapshot (folded, raw units) vs checkpoint (normalised units) of the same step."""
    big = caches["big"]
    spe = big.n_tokens // 128
    scale = 1 / np.sqrt(big.stats.mean_sq_norm)
    assert scale < 0.05  # the activations are far from unit scale

    def stop(step: int) -> None:
        if step == spe:
            raise Kill

    c = cfg(architecture="batchtopk", n_epochs=2.0)
    with pytest.raises(Kill):
        train_group(big, c, [1], 0, checkpoint_dir=tmp_path / "ck", checkpoint_every=spe,
                    snapshot_path=lambda i, e: tmp_path / f"snap{e}", callback=stop,
                    snapshots_at_epochs=(1,))
    folded = load_sae(tmp_path / "snap1")
    t = load_file(str(tmp_path / "ck" / "checkpoint" / "state.safetensors"))
    normed = sae_from_tensors(folded.cfg, {
        "W_enc": t["W_enc"][0], "W_dec": t["W_dec"][0], "b_enc": t["b_enc"][0],
        "b_dec": t["b_dec"][0], "threshold": torch.full((32,), float(t["threshold"][0]))})
    x = torch.from_numpy(big.load())
    assert torch.allclose(folded(x), normed(x * scale) / scale, rtol=1e-4, atol=1e-3)
    assert torch.allclose(folded.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    xs = (x * scale).double()
    with torch.no_grad():
        err = ((normed(x * scale).double() - xs) ** 2).sum()
    ev_normed = 1 - err / ((xs - xs.mean(0)) ** 2).sum()
    assert evaluate_sae(folded, big)["ev"] == pytest.approx(float(ev_normed), abs=1e-4)
