"""Tests for saestab.tokens: document-level split, context cutting, storage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from saestab import tokens
from saestab.io import InputError

BOS, EOS = 1, 2


def encode(text: str) -> list[int]:
    """Words ``d<i>w<j>`` become ``1000 * (i + 1) + j``: every token names its document."""
    out = []
    for word in text.split():
        doc, pos = word[1:].split("w")
        out.append(1000 * (int(doc) + 1) + int(pos))
    return out


def make_docs(lengths: list[int]) -> list[dict]:
    return [{"id": f"doc-{i}", "title": f"T{i}",
             "text": " ".join(f"d{i}w{j}" for j in range(n))} for i, n in enumerate(lengths)]


LENGTHS = [37, 5, 120, 64, 9, 250, 18, 77, 3, 41, 140, 12, 55, 90, 26, 0, 33, 71, 8, 102]


def corpus_result(seed: int = 0, **kw) -> tuple[list[dict], dict]:
    docs = make_docs(LENGTHS)
    args = dict(bos_token_id=BOS, eos_token_id=EOS, context_length=16, train_tokens=500,
                eval_tokens=200, seed=seed)
    args.update(kw)
    return docs, tokens.tokenize_corpus(docs, encode, **args)


def test_make_contexts_exact_small_example() -> None:
    ctx, ids = tokens.make_contexts([[5, 6, 7], [8, 9], [10, 11, 12]], context_length=4,
                                    n_tokens=5, bos_token_id=BOS, eos_token_id=EOS)
    # stream 5 6 7 EOS 8 9 | EOS 10 11 12 ... cut into chunks of 3 behind BOS; ceil(5/3) = 2
    assert ctx.dtype == np.int32 and ids.dtype == np.int32
    assert ctx.tolist() == [[1, 5, 6, 7], [1, 2, 8, 9]]
    assert ids.tolist() == [[-1, 0, 0, 0], [-1, -1, 1, 1]]


def test_make_contexts_without_bos_or_eos_and_doc_indices() -> None:
    ctx, ids = tokens.make_contexts([[5, 6, 7], [], [8, 9, 10]], context_length=3, n_tokens=6,
                                    bos_token_id=BOS, eos_token_id=None, prepend_bos=False,
                                    doc_indices=[7, 3, 4])
    assert ctx.tolist() == [[5, 6, 7], [8, 9, 10]]
    assert ids.tolist() == [[7, 7, 7], [4, 4, 4]]
    ctx, _ = tokens.make_contexts([[5, 6, 7, 8]], context_length=3, n_tokens=2,
                                  bos_token_id=None, eos_token_id=None)
    assert ctx.tolist() == [[5, 6, 7]]  # no BOS id: chunks of the full length
    ctx, ids = tokens.make_contexts([[5]], context_length=4, n_tokens=0, bos_token_id=BOS,
                                    eos_token_id=EOS)
    assert ctx.shape == ids.shape == (0, 4)


def test_make_contexts_drops_the_trailing_partial_chunk_and_errors_when_short() -> None:
    lists = [[5, 6, 7], [8, 9]]  # stream of 6 with the separator
    ctx, _ = tokens.make_contexts(lists, context_length=4, n_tokens=6, bos_token_id=BOS,
                                  eos_token_id=EOS)
    assert ctx.shape == (2, 4)
    with pytest.raises(ValueError) as err:
        tokens.make_contexts(lists, context_length=4, n_tokens=7, bos_token_id=BOS,
                             eos_token_id=EOS)
    message = str(err.value)
    assert "requested 7 tokens" in message and "9 in all" in message and "only 6" in message
    with pytest.raises(ValueError, match="context_length"):
        tokens.make_contexts(lists, context_length=1, n_tokens=1, bos_token_id=BOS,
                             eos_token_id=EOS)


def test_split_documents_is_a_minimal_shuffled_prefix() -> None:
    counts = [10, 0, 30, 5, 25, 40, 15]
    train, evals = tokens.split_documents(counts, eval_tokens=50, seed=3)
    order = np.random.default_rng(3).permutation(len(counts))
    assert np.concatenate([evals, train]).tolist() == order.tolist()
    eval_counts = [counts[i] for i in evals]
    assert sum(eval_counts) >= 50 and sum(eval_counts[:-1]) < 50
    assert set(train).isdisjoint(evals) and len(train) + len(evals) == len(counts)
    with pytest.raises(ValueError, match="requested 1000 tokens"):
        tokens.split_documents(counts, eval_tokens=1000, seed=0)
    train, evals = tokens.split_documents(counts, eval_tokens=0, seed=0)
    assert len(evals) == 0 and sorted(train) == list(range(len(counts)))


def test_split_documents_takes_at_least_min_eval_documents() -> None:
    counts = [100, 0, 30, 5, 25, 40, 15, 60, 0, 80, 10, 12]
    train, evals = tokens.split_documents(counts, eval_tokens=50, seed=3, min_eval_documents=6)
    order = np.random.default_rng(3).permutation(len(counts))
    assert np.concatenate([evals, train]).tolist() == order.tolist()
    non_empty = [counts[i] > 0 for i in evals]
    assert sum(non_empty) == 6 and non_empty[-1]  # the shortest prefix with six documents
    assert set(train).isdisjoint(evals)
    with pytest.raises(ValueError, match="at least 11 documents.*10 non-empty"):
        tokens.split_documents(counts, eval_tokens=1, seed=0, min_eval_documents=11)


def test_even_shares_water_fill_the_budget() -> None:
    lengths = [5, 100, 40, 0, 300, 41]
    shares = tokens.even_shares(lengths, 150)
    assert shares.sum() == 150 and (shares <= np.asarray(lengths)).all()
    assert shares[0] == 5 and shares[3] == 0  # short documents give all they have
    big = shares[[1, 2, 4, 5]]
    assert big.max() - big.min() <= 1  # the rest share the budget evenly
    assert tokens.even_shares(lengths, 486).tolist() == lengths
    assert tokens.even_shares(lengths, 0).sum() == 0
    with pytest.raises(ValueError, match="only 486"):
        tokens.even_shares(lengths, 487)


def test_document_windows_are_contiguous_and_at_least_min_share() -> None:
    lists = [np.arange(1000 * i, 1000 * i + n) for i, n in enumerate([300, 40, 500, 200, 90])]
    rng = np.random.default_rng(0)
    windows = tokens.document_windows(lists, 400, rng)
    assert [len(w) for w in windows] == [90, 40, 90, 90, 90]
    assert all((np.diff(w) == 1).all() for w in windows)  # contiguous pieces of each document
    assert all(set(w) <= set(doc) for w, doc in zip(windows, lists, strict=True))
    # an even share of 20 tokens is below a 64-token minimum: the first documents only
    windows = tokens.document_windows(lists, 100, rng, min_share=64)
    assert [len(w) for w in windows] == [60, 40, 0, 0, 0]
    windows = tokens.document_windows(lists, 150, rng, min_share=64)
    assert [len(w) for w in windows] == [55, 40, 55, 0, 0]


def test_eval_and_train_spread_over_many_documents() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(200, 2000, size=60).tolist()
    docs = make_docs(lengths)
    args = dict(bos_token_id=BOS, eos_token_id=EOS, context_length=32, train_tokens=6000,
                eval_tokens=1500, eval_documents=12)
    result = tokens.tokenize_corpus(docs, encode, seed=4, **args)
    ev, tr = result["eval"], result["train"]
    # the eval budget would fit in one document; it is spread over twelve instead
    assert len(ev["documents"]) == 12 and ev["n_documents_used"] == 12
    assert ev["document_tokens"].min() >= 0.8 * ev["document_tokens"].max()
    # every train document contributes, evenly (the last one loses the trimmed separators)
    assert tr["n_documents_used"] == len(tr["documents"]) == 48
    assert np.sort(tr["document_tokens"])[1] >= np.sort(tr["document_tokens"])[-1] - 1
    assert set(tr["documents"]).isdisjoint(ev["documents"])
    for part in (ev, tr):
        ids = part["doc_ids"]
        np.testing.assert_array_equal(
            np.bincount(ids[ids >= 0], minlength=len(docs))[part["doc_indices"]],
            part["document_tokens"])
    again = tokens.tokenize_corpus(docs, encode, seed=4, **args)
    other = tokens.tokenize_corpus(docs, encode, seed=5, **args)
    for split in ("train", "eval"):
        np.testing.assert_array_equal(again[split]["contexts"], result[split]["contexts"])
    assert other["eval"]["documents"] != ev["documents"]
    # a context sample for the spliced loss covers many documents, reproducibly
    pick = tokens.sample_contexts_by_document(ev["doc_ids"], 12, seed=0)
    owners = tokens.context_documents(ev["doc_ids"])[pick]
    assert len(pick) == 12 and len(set(owners.tolist())) == 12
    np.testing.assert_array_equal(pick, tokens.sample_contexts_by_document(ev["doc_ids"], 12, 0))
    assert tokens.sample_contexts_by_document(ev["doc_ids"], 10_000, 0).tolist() == \
        list(range(len(ev["contexts"])))


def test_context_documents_takes_the_majority_document() -> None:
    ids = np.array([[-1, 3, 3, -1, 5], [-1, 5, -1, 7, 7], [-1, -1, -1, -1, -1]])
    assert tokens.context_documents(ids).tolist() == [3, 7, -1]


def test_tokenize_corpus_split_is_disjoint_and_budgets_are_met() -> None:
    docs, result = corpus_result()
    train, evals = result["train"], result["eval"]
    assert set(train["documents"]).isdisjoint(evals["documents"])
    assert sorted(train["documents"] + evals["documents"]) == sorted(d["id"] for d in docs)
    for part, budget in ((train, 500), (evals, 200)):
        ctx, ids = part["contexts"], part["doc_ids"]
        assert ctx.shape == (math.ceil(budget / 15), 16)
        assert (ctx[:, 1:] >= 0).all() and ctx[:, 1:].size >= budget
        used = set(np.unique(ids[ids >= 0]).tolist())
        assert used <= set(part["doc_indices"].tolist())
        assert part["n_documents_used"] == len(used)
    train_used = set(np.unique(train["doc_ids"][train["doc_ids"] >= 0]).tolist())
    eval_used = set(np.unique(evals["doc_ids"][evals["doc_ids"] >= 0]).tolist())
    assert train_used and eval_used and train_used.isdisjoint(eval_used)


def test_contexts_start_with_bos_and_doc_ids_map_back() -> None:
    docs, result = corpus_result()
    for split in ("train", "eval"):
        ctx, ids = result[split]["contexts"], result[split]["doc_ids"]
        assert (ctx[:, 0] == BOS).all()
        assert not (ctx[:, 1:] == BOS).any()  # BOS never inside a context
        special = (ctx == BOS) | (ctx == EOS)
        assert ((ids == -1) == special).all()
        text = ids >= 0
        # every text token names its document: token // 1000 - 1 == document index
        assert (ctx[text] // 1000 - 1 == ids[text]).all()
        # within a document the tokens are consecutive word positions
        flat_tok, flat_id = ctx[:, 1:].reshape(-1), ids[:, 1:].reshape(-1)
        keep = flat_id >= 0
        tok, doc = flat_tok[keep], flat_id[keep]
        same = doc[1:] == doc[:-1]
        assert (np.diff(tok)[same] == 1).all()
        # each document appears as one window: its positions are contiguous in the stream
        assert all(np.ptp(np.flatnonzero(doc == i)) == (doc == i).sum() - 1
                   for i in np.unique(doc))
        assert all(docs[i]["text"] for i in np.unique(doc))


def test_split_is_reproducible_and_depends_on_seed() -> None:
    _, a = corpus_result(seed=5)
    _, b = corpus_result(seed=5)
    _, c = corpus_result(seed=6)
    for split in ("train", "eval"):
        assert np.array_equal(a[split]["contexts"], b[split]["contexts"])
        assert np.array_equal(a[split]["doc_ids"], b[split]["doc_ids"])
        assert a[split]["documents"] == b[split]["documents"]
    assert a["eval"]["documents"] != c["eval"]["documents"]
    assert not np.array_equal(a["eval"]["contexts"], c["eval"]["contexts"])


def test_tokenizer_added_specials_are_stripped() -> None:
    docs = make_docs([20, 30, 25, 40])
    result = tokens.tokenize_corpus(docs, lambda t: [BOS, *encode(t), EOS], BOS, EOS,
                                    context_length=8, train_tokens=40, eval_tokens=20, seed=0)
    for split in ("train", "eval"):
        ctx = result[split]["contexts"]
        assert not (ctx[:, 1:] == BOS).any()
        assert not ((ctx[:, 1:-1] == EOS) & (ctx[:, 2:] == EOS)).any()  # no doubled EOS


def test_corpus_too_small_raises_with_counts() -> None:
    with pytest.raises(ValueError, match=r"train split .*requested 100000 tokens"):
        corpus_result(train_tokens=100_000)
    with pytest.raises(ValueError, match="requested"):
        corpus_result(eval_tokens=100_000)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    docs, result = corpus_result()
    out = tmp_path / "tokens"
    out.mkdir()
    (out / "stale.npy").write_bytes(b"old")  # replaced as a whole directory
    tokens.save_tokens(out, result, meta={"tokenizer": "fake", "corpus_sha256": "abc"})
    assert sorted(p.name for p in out.iterdir()) == [
        "eval.npy", "eval_doc_ids.npy", "split.json", "train.npy", "train_doc_ids.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]
    for split in ("train", "eval"):
        ctx, ids = tokens.load_tokens(out, split)
        assert np.array_equal(ctx, result[split]["contexts"])
        assert np.array_equal(ids, result[split]["doc_ids"])
    info = json.loads((out / "split.json").read_text())
    assert info["seed"] == 0 and info["context_length"] == 16
    assert info["meta"] == {"tokenizer": "fake", "corpus_sha256": "abc"}
    assert info["eval"]["documents"] == result["eval"]["documents"]
    assert info["eval"]["n_contexts"] == result["eval"]["contexts"].shape[0]
    assert info["train"]["n_text_tokens"] == int((result["train"]["doc_ids"] >= 0).sum())
    assert sum(info["train"]["document_tokens"]) == info["train"]["n_text_tokens"]
    assert len(info["eval"]["document_tokens"]) == info["eval"]["n_documents"]
    ctx, _ = tokens.load_tokens(out, "train", mmap=True)
    assert isinstance(ctx, np.memmap)


def test_load_tokens_errors(tmp_path: Path) -> None:
    _, result = corpus_result()
    tokens.save_tokens(tmp_path / "t", result)
    with pytest.raises(ValueError, match="split"):
        tokens.load_tokens(tmp_path / "t", "test")
    (tmp_path / "t" / "eval_doc_ids.npy").unlink()
    with pytest.raises(InputError, match="eval_doc_ids.npy"):
        tokens.load_tokens(tmp_path / "t", "eval")
    np.save(tmp_path / "t" / "train.npy", np.zeros((3, 16), dtype=np.int64))
    with pytest.raises(InputError, match="int32"):
        tokens.load_tokens(tmp_path / "t", "train")
    with pytest.raises(InputError, match="split.json"):
        tokens.load_tokens(tmp_path / "missing", "train")
