"""The streamed training data: order, reproducibility, resumption, bounded windows; and the
warmup-stable-decay snapshots that read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saestab.activations import ActivationCache, write_cache
from saestab.sae import load_sae
from saestab.training import RunOptions, ShuffledStream, TrainConfig, train_group

D = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    """Row r holds the value r in every column, so a batch names the rows it was read from;
    1,000 rows in shards of 300 (blocks straddle shard boundaries)."""
    ctx = np.arange(1000).reshape(100, 10)
    path = tmp_path_factory.mktemp("stream") / "cache"
    return write_cache(path, lambda ids: ids[..., None].float().expand(*ids.shape, D), ctx,
                       d=D, bos_token_id=None, outlier_factor=None, shard_tokens=300)


def stream(cache: ActivationCache, **kw) -> ShuffledStream:
    args = {"batch_size": 64, "data_seed": 3, "shuffle_block": 50, "shuffle_window": 200}
    args.update(kw)
    return ShuffledStream(cache, args.pop("batch_size"), args.pop("data_seed"), **args)


def rows(batches) -> list[np.ndarray]:
    out = []
    for x in batches:
        assert torch.equal(x, x[:, :1].expand_as(x))  # whole rows, not mixed columns
        out.append(x[:, 0].long().numpy())
    return out


def test_each_epoch_is_a_shuffled_subset_of_distinct_rows(cache) -> None:
    s = stream(cache)
    assert s.steps_per_epoch == 1000 // 64
    epochs = [np.concatenate(rows(s.batches(e * s.steps_per_epoch, (e + 1) * s.steps_per_epoch)))
              for e in range(3)]
    for got in epochs:
        assert len(got) == len(set(got.tolist())) == 15 * 64  # no row twice in an epoch
        assert not np.array_equal(got, np.sort(got))  # shuffled
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    # rows of one window stay together: the first 200 rows read come from 4 blocks of 50
    assert len(set((epochs[0][:200] // 50).tolist())) == 4
    # the order is a function of the seed
    again = np.concatenate(rows(stream(cache).batches(0, 15)))
    other = np.concatenate(rows(stream(cache, data_seed=4).batches(0, 15)))
    assert np.array_equal(again, epochs[0]) and not np.array_equal(other, epochs[0])
    # epoch_rows names the same order without reading the data
    for e, got in enumerate(epochs):
        assert np.array_equal(s.epoch_rows(e)[:960], got)


@pytest.mark.parametrize("start", [1, 3, 4, 14, 15, 16, 29])
def test_a_stream_started_at_any_step_reads_the_same_batches(cache, start: int) -> None:
    s = stream(cache)
    whole = rows(s.batches(0, 40))
    part = rows(s.batches(start, 40))
    assert len(part) == 40 - start
    for a, b in zip(whole[start:], part, strict=True):
        assert np.array_equal(a, b)


def test_scale_and_sample(cache) -> None:
    s = stream(cache, scale=0.5)
    x = next(iter(s.batches(0, 1)))
    assert x.dtype == torch.float32
    assert torch.all(x * 2 == (x * 2).round()) and not torch.all(x == x.round())
    assert s.sample(5)[:, 0].tolist() == [0.0, 124.5, 249.5, 374.5, 499.5]


def test_one_window_reads_the_whole_cache(cache) -> None:
    """A window at least as large as the cache is a full permutation of it (the in-memory
    case), and every window size is still an epoch of distinct rows."""
    for window in (10, 1000, 4096):
        got = np.concatenate(rows(stream(cache, shuffle_window=window).batches(0, 15)))
        assert len(set(got.tolist())) == len(got) == 960


def cfg(**kw) -> TrainConfig:
    base = {"architecture": "topk", "d_sae": 16, "k": 2, "batch_size": 64, "warmup_steps": 3,
            "lr": 3e-3, "lr_decay_fraction": 0.25, "shuffle_block": 50, "shuffle_window": 200}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> ActivationCache:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(64, 8, generator=gen)
    ctx = np.random.default_rng(0).integers(0, 64, (40, 25))
    return write_cache(tmp_path_factory.mktemp("noise") / "cache", lambda ids: table[ids], ctx,
                       d=8, bos_token_id=None, outlier_factor=None, shard_tokens=256)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "relu-target_l0",
                                  "jumprelu-target_l0"])
def test_a_snapshot_is_the_run_of_its_budget(noise, tmp_path: Path, arch: str) -> None:
    """Warmup-stable-decay: the epoch-e snapshot of a longer run equals, bit for bit, a run of
    e epochs with the same recipe (each decays over its own final steps); the main run itself
    is unchanged by the branches it forks. With ``target_l0`` the penalty coefficient each seed
    reached is part of that state."""
    arch, _, mode = arch.partition("-")
    extra = {"k": None, "l1_coefficient": 1e-3} if arch in ("relu", "jumprelu") else {}
    if mode:
        extra["target_l0"] = 3.0
    out = [tmp_path / "long" / f"seed{s}" for s in (1, 2)]
    long = train_group(noise, cfg(architecture=arch, n_epochs=4.0, **extra), [1, 2], 0,
                       RunOptions(out_dirs=out, snapshots_at_epochs=(1, 2, 4)))
    plain = train_group(noise, cfg(architecture=arch, n_epochs=4.0, **extra), [1, 2], 0,
                        RunOptions(snapshots_at_epochs=()))
    for a, b in zip(long.saes, plain.saes, strict=True):
        for name, t in a.state_tensors().items():
            assert torch.equal(t, b.state_tensors()[name]), name
    for e in (1, 2):
        short = train_group(noise, cfg(architecture=arch, n_epochs=float(e), **extra), [1, 2], 0,
                            RunOptions(snapshots_at_epochs=()))
        for s, sae in zip((1, 2), short.saes, strict=True):
            snap = (tmp_path / "long" / "snapshots" / f"epoch{e}" / f"seed{s}")
            saved = load_sae(snap)
            assert saved.cfg.recipe["steps"] == e * (1000 // 64)
            for name, t in sae.state_tensors().items():
                assert torch.equal(t, saved.state_tensors()[name]), (e, s, name)
            reached = sae.cfg.recipe.get("target_l0_reached")
            assert (reached is not None) == bool(mode)
            assert saved.cfg.recipe.get("target_l0_reached") == reached
    # and the epoch-4 snapshot is the final model
    final = load_sae(tmp_path / "long" / "snapshots" / "epoch4" / "seed1")
    assert torch.equal(final.state_tensors()["W_dec"], long.saes[0].state_tensors()["W_dec"])
