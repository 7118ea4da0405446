import json

import numpy as np
import pytest
import torch

from saestab import activations
from saestab.activations import write_cache, write_subset
from saestab.io import InputError

HOOK = "blocks.1.hook_resid_post"
BOS = 256


def _contexts(n=12, T=24, seed=0):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(32, 127, size=(n, T))
    ctx[:, 0] = BOS
    return ctx


def test_hook_layer():
    assert activations.hook_layer("blocks.15.hook_resid_post") == 15
    assert activations.hook_layer("hook_embed") is None


def test_cache_equals_direct_run_with_cache(tmp_path, tiny_model):
    ctx = _contexts()
    cache = activations.write_cache(tmp_path / "c", tiny_model.forward_fn(HOOK), ctx, d=32,
                                    bos_token_id=BOS, batch_size=5, outlier_factor=None,
                                    shard_tokens=100, meta={"hook": HOOK})
    n, T = ctx.shape
    assert cache.n_tokens == n * (T - 1)  # every BOS dropped, nothing else
    assert cache.n_shards == int(np.ceil(cache.n_tokens / 100))
    assert cache.header["dropped"]["bos"] == n
    assert not np.any(cache.token_ids() == BOS)

    _, ref = tiny_model.bridge.run_with_cache(torch.from_numpy(ctx))
    ref = ref[HOOK].numpy()
    rng = np.random.default_rng(1)
    rows = rng.choice(cache.n_tokens, size=50, replace=False)
    got = cache.rows(rows)
    pos = cache.positions()[rows]
    np.testing.assert_allclose(got, ref[pos[:, 0], pos[:, 1]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.token_ids()[rows], ctx[pos[:, 0], pos[:, 1]])
    np.testing.assert_array_equal(cache.contexts(), ctx)

    # statistics are those of the stored rows
    allrows = cache.load()
    np.testing.assert_allclose(cache.stats.mean, allrows.astype(np.float64).mean(0), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(cache.stats.mean_sq_norm, (allrows.astype(np.float64) ** 2).sum(1)
                               .mean(), rtol=1e-6)
    # batches in a given order reproduce the rows
    order = rng.permutation(cache.n_tokens)
    streamed = np.concatenate(list(cache.iter_batches(64, order=order)))
    np.testing.assert_array_equal(streamed, allrows[order])


def test_outliers_dropped_and_recorded(tmp_path):
    d = 8
    table = np.random.default_rng(0).normal(size=(300, d)).astype(np.float32)
    table[99] *= 1000.0  # token 99 is a "massive activation"

    def forward(tokens):
        return torch.from_numpy(table)[tokens]

    ctx = _contexts(n=6, T=16)
    ctx[ctx == 99] = 100
    ctx[2, 5] = 99
    ctx[4, 9] = 99
    cache = activations.write_cache(tmp_path / "c", forward, ctx, d=d, bos_token_id=BOS,
                                    outlier_factor=10.0)
    dropped = cache.header["dropped"]
    assert dropped["outliers"] == 2
    assert {(r["context"], r["position"]) for r in dropped["outlier_rows"]} == {(2, 5), (4, 9)}
    assert all(r["token_id"] == 99 for r in dropped["outlier_rows"])
    assert cache.n_tokens == 6 * 15 - 2
    assert not np.any(cache.token_ids() == 99)


def test_float16_storage(tmp_path, tiny_model):
    cache = activations.write_cache(tmp_path / "c", tiny_model.forward_fn(HOOK), _contexts(n=3),
                                    d=32, bos_token_id=BOS, dtype="float16")
    assert cache.dtype == np.float16 and cache.acts(0).dtype == np.float16
    assert cache.load().dtype == np.float32


def test_interrupted_write_leaves_nothing(tmp_path):
    calls = {"n": 0}

    def forward(tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return torch.zeros(*tokens.shape, 4)

    with pytest.raises(KeyboardInterrupt):
        activations.write_cache(tmp_path / "c", forward, _contexts(n=4), d=4, bos_token_id=BOS,
                                batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_is_named(tmp_path, tiny_model):
    path = tmp_path / "c"
    activations.write_cache(path, tiny_model.forward_fn(HOOK), _contexts(n=4), d=32,
                            bos_token_id=BOS, shard_tokens=40)
    np.save(path / "acts-00001.npy", np.zeros((3, 32), np.float32))  # truncated shard
    with pytest.raises(InputError, match=r"acts-00001\.npy: expected shape"):
        activations.ActivationCache.open(path)
    (path / "acts-00001.npy").unlink()
    with pytest.raises(InputError, match=r"acts-00001\.npy: expected an activation shard .* does "
                       r"not exist\. Delete the directory .* \(rule cache_activations"):
        activations.ActivationCache.open(path)
    header = json.loads((path / "header.json").read_text())
    header["format"] = "something-else"
    (path / "header.json").write_text(json.dumps(header))
    with pytest.raises(InputError, match="not an activation cache"):
        activations.ActivationCache.open(path)
    with pytest.raises(InputError, match="does not exist"):
        activations.ActivationCache.open(tmp_path / "nowhere")


def test_forward_shape_mismatch_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="forward returned shape"):
        activations.write_cache(tmp_path / "c", lambda t: torch.zeros(t.shape[0], 4),
                                _contexts(n=2), d=4, bos_token_id=BOS)


def test_write_subset_keeps_rows_and_recomputes_statistics(tmp_path) -> None:
    table = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    ctx = np.random.default_rng(0).integers(0, 50, (20, 10))
    full = write_cache(tmp_path / "full", lambda ids: table[ids], ctx, d=6, bos_token_id=None,
                       outlier_factor=None, shard_tokens=64)
    rows = np.nonzero(full.positions()[:, 0] % 3 != 0)[0]  # drop every third context
    sub = write_subset(full, rows[::-1], tmp_path / "sub", shard_tokens=50)
    assert sub.n_tokens == len(rows) and sub.n_shards == -(-len(rows) // 50)
    assert np.array_equal(sub.load(), full.rows(rows))
    assert np.array_equal(sub.token_ids(), full.token_ids()[rows])
    assert np.array_equal(sub.positions(), full.positions()[rows])
    x = full.rows(rows).astype(np.float64)
    assert sub.stats.mean == pytest.approx(x.mean(0))
    assert sub.stats.mean_sq_norm == pytest.approx((x ** 2).sum(1).mean())
    assert sub.stats.mean_sq_norm != pytest.approx(full.stats.mean_sq_norm)
    with pytest.raises(ValueError, match="subset"):
        write_subset(full, np.array([full.n_tokens]), tmp_path / "bad")
