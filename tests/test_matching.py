"""Matching decoder directions across seeds: chunking, stacking, planted partners, Hungarian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saestab import matching
from saestab.io import InputError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_saes(S: int = 5, n_shared: int = 24, n_private: int = 24, d: int = 64,
                 noise: float = 0.25, seed: int = 0
                 ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """S dictionaries: ``n_shared`` common directions (plus noise of norm ~``noise``) and
    ``n_private`` seed-specific random ones, each in its own random order.

    Returns ``(dirs, perms, n_shared)``; row ``p`` of ``dirs[s]`` is original feature
    ``perms[s][p]``, and originals ``< n_shared`` are the shared ones.
    """
    rng = np.random.default_rng(seed)
    shared = unit(rng.standard_normal((n_shared, d)))
    dirs, perms = [], []
    for _ in range(S):
        noisy = unit(shared + noise / np.sqrt(d) * rng.standard_normal((n_shared, d)))
        private = unit(rng.standard_normal((n_private, d)))
        perm = rng.permutation(n_shared + n_private)
        dirs.append(np.concatenate([noisy, private])[perm])
        perms.append(perm)
    return dirs, perms, n_shared


def brute_force(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    C = unit(A).astype(np.float64) @ unit(B).astype(np.float64).T
    return C.max(axis=1), C.argmax(axis=1)


def test_planted_fixture_is_what_it_claims():
    dirs, perms, n_shared = planted_saes()
    for a in range(len(dirs)):
        for b in range(len(dirs)):
            if a == b:
                continue
            C = dirs[a] @ dirs[b].T
            shared_a, shared_b = perms[a] < n_shared, perms[b] < n_shared
            # every shared feature has its partner well above theta ...
            partner = np.argsort(perms[b])[perms[a][shared_a]]
            assert (C[shared_a, partner] > 0.85).all()
            # ... and nothing else comes near it
            assert C[~shared_a].max() < 0.6
            assert C[:, ~shared_b].max() < 0.6


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 103, 4096])
def test_max_cosine_chunked_equals_full(chunk_size):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((103, 32)).astype(np.float32)
    B = rng.standard_normal((77, 32)).astype(np.float32)
    want_val, want_idx = brute_force(A, B)
    val, idx = matching.max_cosine(unit(A), unit(B), chunk_size=chunk_size)
    assert val.dtype == np.float32 and idx.dtype == np.int64 and val.shape == (103,)
    np.testing.assert_allclose(val, want_val, atol=1e-5)
    np.testing.assert_array_equal(idx, want_idx)


def test_max_cosine_normalises_and_accepts_tensors():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((40, 16)).astype(np.float32)
    B = rng.standard_normal((30, 16)).astype(np.float32)
    scaled = torch.from_numpy(A * rng.uniform(0.1, 10, size=(40, 1)).astype(np.float32))
    v1, i1 = matching.max_cosine(unit(A), unit(B))
    v2, i2 = matching.max_cosine(scaled, torch.from_numpy(3 * B), chunk_size=9)
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    np.testing.assert_array_equal(i1, i2)


@pytest.mark.parametrize("kw", [
    {},
    {"chunk_size": 7},
    {"chunk_size": 64, "refs_per_block": 1},
    {"chunk_size": 13, "refs_per_block": 2},
    {"max_block_bytes": 4 * 61 * 10 * 2},  # 10 rows x 2 references per block
    {"max_block_bytes": 1},  # one row, one reference
])
def test_pairwise_equals_brute_force(kw):
    rng = np.random.default_rng(3)
    S, m, d = 5, 61, 24
    D = unit(rng.standard_normal((S, m, d)))
    maxcos, argmax = matching.pairwise_max_cosine(list(D), **kw)
    assert maxcos.shape == argmax.shape == (S, S, m)
    assert maxcos.dtype == np.float16 and argmax.dtype == np.int32
    for a in range(S):
        np.testing.assert_array_equal(maxcos[a, a], 1.0)
        np.testing.assert_array_equal(argmax[a, a], np.arange(m))
        for b in range(S):
            if a != b:
                val, idx = brute_force(D[a], D[b])
                np.testing.assert_allclose(maxcos[a, b], val, atol=1e-3)  # float16 storage
                np.testing.assert_array_equal(argmax[a, b], idx)


def test_plan_respects_the_block_bound():
    for m, n_ref, chunk, budget, refs in [(4096, 15, 4096, 256 * 2**20, None),
                                          (4096, 15, 4096, 64 * 2**20, None),
                                          (1000, 5, 4096, 10**6, None), (1000, 9, 37, 10**7, 3),
                                          (16384, 31, 4096, 2**20, None), (50, 1, 8, 10**6, 4)]:
        rows, k = matching._plan(m, n_ref, chunk, budget, refs)
        assert 1 <= rows <= min(chunk, m) and 1 <= k <= n_ref
        assert rows * k * m * 4 <= budget
        if refs is not None:
            assert k <= refs
    # a budget that holds 4096 rows of one reference stacks 4 references of 1024 rows instead
    assert matching._plan(4096, 15, 4096, 64 * 2**20, None) == (1024, 4)
    assert matching._plan(4096, 15, 4096, 64 * 2**20, 1) == (4096, 1)


def test_pairwise_inputs_list_array_tensor_agree():
    dirs, _, _ = planted_saes(S=3)
    r_list = matching.pairwise_max_cosine(dirs, chunk_size=10)
    r_arr = matching.pairwise_max_cosine(np.stack(dirs), chunk_size=10)
    r_ten = matching.pairwise_max_cosine([torch.from_numpy(x) for x in dirs], chunk_size=10,
                                         value_dtype=np.float32)
    for r in (r_arr, r_ten):
        np.testing.assert_array_equal(r[1], r_list[1])
        np.testing.assert_allclose(r[0].astype(np.float32), r_list[0].astype(np.float32),
                                   atol=1e-3)


def test_pairwise_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        matching.pairwise_max_cosine([np.ones((4, 3)), np.ones((5, 3))])


def test_argmax_points_at_planted_partners():
    dirs, perms, n_shared = planted_saes()
    maxcos, argmax = matching.pairwise_max_cosine(dirs, chunk_size=17)
    S = len(dirs)
    for a in range(S):
        shared = perms[a] < n_shared
        for b in range(S):
            if a == b:
                continue
            partner = np.argsort(perms[b])[perms[a][shared]]
            np.testing.assert_array_equal(argmax[a, b, shared], partner)
            assert (maxcos[a, b, shared] >= 0.7).all()
            assert (maxcos[a, b, ~shared] < 0.7).all()


def test_hungarian_on_permuted_copy_recovers_permutation():
    rng = np.random.default_rng(4)
    A = unit(rng.standard_normal((60, 32)))
    perm = rng.permutation(60)
    B = A[perm]
    row_ind, col_ind, cos = matching.hungarian_match(A, B)
    np.testing.assert_array_equal(row_ind, np.arange(60))
    np.testing.assert_array_equal(col_ind, np.argsort(perm))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    assert matching.matching_iou(A, B, theta=0.7) == 1.0


def test_iou_counts_many_to_one_matches():
    # A's rows 0 and 1 are both near B's row 1: argmax matches both at theta, the one-to-one
    # assignment only one of them; everything else matches under both rules.
    rng = np.random.default_rng(5)
    m = 40
    B = unit(rng.standard_normal((m, 64)))
    A = B.copy()
    A[0] = unit(B[1] + 0.2 / 8 * rng.standard_normal(64))
    maxcos, idx = matching.max_cosine(A, B)
    assert idx[0] == 1 and idx[1] == 1 and (maxcos >= 0.7).all()
    _, col_ind, cos = matching.hungarian_match(A, B)
    assert (cos >= 0.7).sum() == m - 1
    assert matching.matching_iou(A, B, theta=0.7) == pytest.approx((m - 1) / m)


def test_iou_of_unrelated_dictionaries_with_nothing_matched_is_one():
    rng = np.random.default_rng(6)
    A = unit(rng.standard_normal((20, 64)))
    B = unit(rng.standard_normal((20, 64)))
    assert matching.matching_iou(A, B, theta=0.95) == 1.0


def test_save_load_roundtrip(tmp_path):
    dirs, _, _ = planted_saes(S=3)
    maxcos, argmax = matching.pairwise_max_cosine(dirs)
    path = tmp_path / "out" / "maxcos.npz"
    side = matching.save_pairwise(path, maxcos, argmax, {"saes": ["a", "b", "c"]})
    assert side == tmp_path / "out" / "maxcos.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["maxcos.json", "maxcos.npz"]
    mc, am, meta = matching.load_pairwise(path)
    np.testing.assert_array_equal(mc, maxcos)
    np.testing.assert_array_equal(am, argmax)
    assert mc.dtype == np.float16 and am.dtype == np.int32
    assert meta == {"saes": ["a", "b", "c"]}


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "maxcos.npz"
    with pytest.raises(InputError, match="maxcos.json"):
        matching.load_pairwise(path)
    matching.save_pairwise(path, np.ones((2, 2, 3), np.float16), np.zeros((2, 2, 3), np.int32))
    path.write_bytes(b"not an npz")
    with pytest.raises(InputError, match="maxcos.npz"):
        matching.load_pairwise(path)


@pytest.mark.parametrize("rows", [1, 15, 16, 33, 64, 100])
def test_column_max_equals_torch_max(rows):
    x = torch.from_numpy(np.random.default_rng(rows).standard_normal((rows, 50)).astype(np.float32))
    want_val, want_idx = x.max(dim=0)
    val, idx = matching._column_max(x)
    torch.testing.assert_close(val, want_val)
    torch.testing.assert_close(idx, want_idx)


def test_stack_directions_copies_only_when_needed():
    dirs, _, _ = planted_saes(S=3)
    arr = np.stack(dirs)
    assert matching.stack_directions(arr).data_ptr() == arr.ctypes.data  # unit rows: no copy
    raw = arr * 3
    out = matching.stack_directions(raw)
    np.testing.assert_allclose(out.numpy(), arr, atol=1e-6)
    np.testing.assert_allclose(raw, arr * 3)  # input untouched
    loaded = matching.stack_directions(["0", "1", "2"], loader=lambda k: raw[int(k)])
    np.testing.assert_allclose(loaded.numpy(), arr, atol=1e-6)
