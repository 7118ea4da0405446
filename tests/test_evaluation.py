"""SAE evaluation on a real (tiny, synthetic) activation cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saestab import io
from saestab.activations import ActivationCache, write_cache
from saestab.evaluation import (
    evaluate_sae,
    read_evaluation,
    read_scans,
    scan_sae,
    write_evaluation,
    write_scans,
)
from saestab.sae import SAEConfig, sae_from_tensors

D = 8


def make_cache(path: Path, d: int = D, vocab: int = 300, n_ctx: int = 40, t: int = 16,
               seed: int = 0, offset: float = 0.5) -> ActivationCache:
    """A cache whose activations are fixed random vectors looked up by token id."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy((rng.standard_normal((vocab, d)) + offset).astype(np.float32))
    contexts = rng.integers(0, vocab, (n_ctx, t))
    return write_cache(path, lambda ids: table[ids], contexts, d=d, bos_token_id=None,
                       outlier_factor=None)


def identity_sae():
    """f = [relu(x), relu(-x)], x_hat = relu(x) - relu(-x) = x."""
    eye = torch.eye(D)
    cfg = SAEConfig(architecture="relu", d_in=D, d_sae=2 * D)
    return sae_from_tensors(cfg, {"W_enc": torch.cat([eye, -eye], 1),
                                  "W_dec": torch.cat([eye, -eye], 0),
                                  "b_enc": torch.zeros(2 * D), "b_dec": torch.zeros(D)})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    return make_cache(tmp_path_factory.mktemp("eval") / "cache")


def test_perfect_reconstruction(cache: ActivationCache) -> None:
    x = cache.load()
    res = evaluate_sae(identity_sae(), cache, batch_size=100)
    assert res["n_tokens"] == len(x)
    assert res["ev"] == pytest.approx(1.0, abs=1e-6)
    assert res["mse"] == pytest.approx(0.0, abs=1e-9)
    # every coordinate is nonzero, so exactly one feature of each +/- pair fires
    assert res["l0"] == pytest.approx(D)
    assert np.allclose(res["frequency"][:D], (x > 0).mean(0))
    assert np.allclose(res["frequency"][D:], (x < 0).mean(0))
    assert np.allclose(res["mass"][:D], np.clip(x, 0, None).sum(0), rtol=1e-5)
    assert np.allclose(res["mass"][D:], np.clip(-x, 0, None).sum(0), rtol=1e-5)
    # frequencies are ~0.69 / ~0.31 (offset 0.5): all dense at 10%, none dead
    assert res["dead_fraction"] == 0.0
    assert res["dense_fraction"] == 1.0
    strict = evaluate_sae(identity_sae(), cache, dense_threshold=0.5)
    assert strict["dense_fraction"] == pytest.approx(np.mean(res["frequency"] > 0.5))
    assert 0 < strict["dense_fraction"] < 1


def test_zero_features_ev_is_set_by_b_dec(cache: ActivationCache) -> None:
    x = cache.load().astype(np.float64)
    c = np.linspace(-1, 1, D).astype(np.float32)
    cfg = SAEConfig(architecture="relu", d_in=D, d_sae=4)
    sae = sae_from_tensors(cfg, {"W_enc": torch.zeros(D, 4), "W_dec": torch.ones(4, D),
                                 "b_enc": -torch.ones(4), "b_dec": torch.from_numpy(c)})
    res = evaluate_sae(sae, cache, batch_size=77)
    expect = 1 - ((x - c) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert res["ev"] == pytest.approx(expect, rel=1e-6)
    assert res["mse"] == pytest.approx(((x - c) ** 2).sum(1).mean(), rel=1e-6)
    assert res["l0"] == 0 and res["dead_fraction"] == 1.0 and res["dense_fraction"] == 0.0
    assert not res["mass"].any()
    # b_dec at the mean gives EV 0 exactly
    sae.b_dec.data = torch.from_numpy(x.mean(0).astype(np.float32))
    assert evaluate_sae(sae, cache)["ev"] == pytest.approx(0.0, abs=1e-6)


def test_mass_weights_by_decoder_norm(cache: ActivationCache) -> None:
    sae = identity_sae()
    sae.W_dec.data[:D] *= 3.0  # feature j's direction has norm 3 now
    sae.W_enc.data[:, :D] /= 3.0  # keep the reconstruction exact
    res = evaluate_sae(sae, cache)
    x = cache.load()
    assert res["ev"] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(res["mass"][:D], np.clip(x, 0, None).sum(0), rtol=1e-5)
    # max_tokens limits the evaluated rows
    part = evaluate_sae(sae, cache, max_tokens=50)
    assert part["n_tokens"] == 50
    assert np.allclose(part["frequency"][:D], (x[:50] > 0).mean(0))


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_sparse_evaluation_matches_a_dense_reference(cache: ActivationCache, arch: str) -> None:
    """The evaluation decodes and sums through the sparse code: the same numbers as the dense
    code's definitions (TopK selects its entries itself, JumpReLU goes through the dense code)."""
    g = torch.Generator().manual_seed(3)
    m = 32
    cfg = SAEConfig(architecture=arch, d_in=D, d_sae=m, k=4 if arch == "topk" else None)
    tensors = {"W_enc": torch.randn(D, m, generator=g), "W_dec": torch.randn(m, D, generator=g),
               "b_enc": torch.randn(m, generator=g) * 0.3, "b_dec": torch.randn(D, generator=g)}
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(m, generator=g)
    sae = sae_from_tensors(cfg, tensors)
    x = torch.from_numpy(cache.load())
    with torch.no_grad():
        f = sae.encode(x).double()
        w_dec, b_dec = sae.W_dec.double(), sae.b_dec.double()
    x64 = x.double()
    err = ((x64 - (f @ w_dec + b_dec)) ** 2).sum()
    norms = w_dec.norm(dim=1)
    res = evaluate_sae(sae, cache, batch_size=97)
    assert res["ev"] == pytest.approx(1 - float(err) / float(((x64 - x64.mean(0)) ** 2).sum()),
                                      rel=1e-6)
    assert res["mse"] == pytest.approx(float(err) / len(x), rel=1e-6)
    assert res["l0"] == pytest.approx(float((f > 0).sum()) / len(x))
    np.testing.assert_array_equal(res["frequency"], (f > 0).double().mean(0).numpy())
    np.testing.assert_allclose(res["mass"], (f.sum(0) * norms).numpy(), rtol=1e-6)
    np.testing.assert_allclose(res["energy"], ((f ** 2).sum(0) * norms ** 2).numpy(), rtol=1e-6)
    assert 0 < res["l0"] < m / 2  # a sparse code: the test sees active and silent entries


def test_scans_round_trip_and_refuse_other_files(cache: ActivationCache, tmp_path: Path) -> None:
    scans = {3: scan_sae(identity_sae(), cache, top_k=4), 5: scan_sae(identity_sae(), cache)}
    with pytest.raises(ValueError):  # one shape for all seeds: top_k differs
        write_scans(scans, tmp_path / "bad.npz")
    scans[5] = scan_sae(identity_sae(), cache, top_k=4, max_tokens=50)
    path = write_scans(scans, tmp_path / "scans.npz")
    back = read_scans(path)
    assert sorted(back) == [3, 5] and back[5].n_tokens == 50
    for s in (3, 5):
        a, b = scans[s].evaluation(), back[s].evaluation()
        assert a["ev"] == b["ev"] and np.array_equal(a["mass"], b["mass"])
        assert np.array_equal(scans[s].top_rows, back[s].top_rows)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(io.InputError, match="not a feature-scan file"):
        read_scans(tmp_path / "other.npz")
    with pytest.raises(io.InputError, match="rule scan_features"):
        read_scans(tmp_path / "missing.npz")


def test_write_and_read_evaluation(cache: ActivationCache, tmp_path: Path) -> None:
    res = evaluate_sae(identity_sae(), cache)
    json_path, pq_path = write_evaluation(res, tmp_path / "sae", extra={"seed": 3})
    scalars = json.loads(json_path.read_text())
    assert scalars["seed"] == 3 and scalars["ev"] == res["ev"] and "frequency" not in scalars
    back = read_evaluation(tmp_path / "sae")
    assert np.array_equal(back["frequency"], res["frequency"])
    assert np.array_equal(back["mass"], res["mass"])
    assert back["l0"] == res["l0"]
