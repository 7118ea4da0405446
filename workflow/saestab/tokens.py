"""Documents to fixed-length token contexts, with a train/eval split by document.

A tokenizer is any ``encode(text) -> list[int]`` callable plus optional BOS/EOS ids. Documents
are shuffled with a seeded generator; the first ones go to the eval split until it holds at least
``eval_documents`` documents and enough tokens for its budget, the rest to train, so no document
contributes to both. Within a split every document contributes an equal share of the split's
token budget (a document shorter than the share contributes all of itself): a contiguous window
at a seeded random offset. The windows are joined with an EOS separator between documents and cut
into contexts, each starting with BOS. Spreading both splits over all their documents keeps every
EV and loss measured on the eval split from resting on one or two articles, and keeps training
from seeing only the first documents that happen to fill the budget.

On-disk layout of a token set (a directory)::

    train.npy, eval.npy                  (n, T) int32 token contexts
    train_doc_ids.npy, eval_doc_ids.npy  (n, T) int32: index of the source document (its position
                                         in the corpus) per position, -1 for BOS/EOS
    split.json                           documents per split, tokens per document, seed, T, meta
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import io
from .logs import get_logger, progress

if TYPE_CHECKING:
    from .corpus import Document

log = get_logger("tokens")

SPLITS = ("train", "eval")
FORMAT = "saestab.token-contexts"
VERSION = 1
_INT32_MAX = np.iinfo(np.int32).max


def _chunk_length(context_length: int, bos_token_id: int | None, prepend_bos: bool) -> int:
    """Number of positions per context that come from the token stream (all but BOS)."""
    with_bos = prepend_bos and bos_token_id is not None
    if context_length < (2 if with_bos else 1):
        raise ValueError(f"context_length must be at least {2 if with_bos else 1}, "
                         f"got {context_length}")
    return context_length - 1 if with_bos else context_length


def stream_tokens_needed(n_tokens: int, context_length: int, bos_token_id: int | None,
                         prepend_bos: bool = True) -> int:
    """Stream positions (text and EOS) that :func:`make_contexts` consumes for ``n_tokens``."""
    chunk = _chunk_length(context_length, bos_token_id, prepend_bos)
    return math.ceil(max(n_tokens, 0) / chunk) * chunk


def split_documents(token_counts: Sequence[int], eval_tokens: int, seed: int,
                    min_eval_documents: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split documents by index into (train, eval), each in shuffled order.

    Document indices are shuffled with ``numpy.random.default_rng(seed)``; documents go to eval
    in that order until the eval split holds at least ``min_eval_documents`` non-empty documents
    and their ``token_counts`` sum to at least ``eval_tokens``; the rest go to train. Raises
    ValueError if the corpus cannot meet either requirement.
    """
    counts = np.asarray(token_counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("token_counts must be a sequence of non-negative integers")
    if min_eval_documents < 1:
        raise ValueError(f"min_eval_documents must be at least 1, got {min_eval_documents}")
    order = np.random.default_rng(seed).permutation(len(counts))
    if eval_tokens <= 0:
        return order, order[:0]
    cumulative = np.cumsum(counts[order])
    non_empty = np.cumsum(counts[order] > 0)
    reached = np.flatnonzero((cumulative >= eval_tokens) & (non_empty >= min_eval_documents))
    if reached.size == 0:
        raise ValueError(
            f"eval split: requested {eval_tokens} tokens from at least {min_eval_documents} "
            f"documents, but the corpus has {int(non_empty[-1]) if len(counts) else 0} "
            f"non-empty documents with {int(counts.sum())} tokens in all; lower "
            "tokens.eval_tokens or tokens.eval_documents, or use a larger corpus")
    n_eval = int(reached[0]) + 1
    return order[n_eval:], order[:n_eval]


def even_shares(lengths: Sequence[int], budget: int) -> np.ndarray:
    """Tokens each document contributes so that together they give ``budget``, spread evenly.

    Water-filling: every document contributes ``min(length, level)`` for the smallest level that
    meets the budget, and the documents at the level give one token less where that still meets it
    exactly. Raises ValueError if all documents together are shorter than ``budget``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if budget <= 0:
        return np.zeros_like(lengths)
    if total < budget:
        raise ValueError(f"requested {budget} tokens, but the {len(lengths)} documents provide "
                         f"only {total}")
    lo, hi = 1, int(lengths.max())
    while lo < hi:  # smallest level whose capped sum meets the budget
        mid = (lo + hi) // 2
        if int(np.minimum(lengths, mid).sum()) >= budget:
            hi = mid
        else:
            lo = mid + 1
    shares = np.minimum(lengths, lo)
    excess = int(shares.sum()) - budget
    at_level = np.flatnonzero(lengths >= lo)[::-1]
    shares[at_level[:excess]] -= 1  # excess < len(at_level), since level lo - 1 falls short
    return shares


def document_windows(token_lists: Sequence[np.ndarray], budget: int,
                     rng: np.random.Generator, min_share: int = 1) -> list[np.ndarray]:
    """One contiguous window per document, of the sizes :func:`even_shares` gives for ``budget``,
    each at a random offset inside its document (empty for documents that contribute nothing).

    When an even share over all documents would fall below ``min_share`` tokens (e.g. one
    context's worth, so that a context does not stitch together a dozen documents), only the
    first documents (in the given, shuffled order) are used: the fewest whose windows of up to
    ``min_share`` tokens cover the budget.
    """
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    shares = even_shares(lengths, budget)
    if budget > 0 and shares.max() < min_share:
        covered = np.cumsum(np.minimum(lengths, min_share))
        n_docs = int(np.searchsorted(covered, budget)) + 1
        shares = np.zeros_like(lengths)
        shares[:n_docs] = even_shares(lengths[:n_docs], budget)
    windows = []
    for tokens, share in zip(token_lists, shares, strict=True):
        start = int(rng.integers(0, len(tokens) - share + 1))
        windows.append(np.asarray(tokens)[start:start + share])
    return windows


def _as_tokens(tokens: Sequence[int], index: int) -> np.ndarray:
    arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() > _INT32_MAX):
        raise ValueError(f"document {index}: token ids must lie in [0, {_INT32_MAX}]")
    return arr


def make_contexts(token_lists: Sequence[Sequence[int]], context_length: int, n_tokens: int,
                  bos_token_id: int | None, eos_token_id: int | None, prepend_bos: bool = True,
                  doc_indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut concatenated documents into ``(n, context_length)`` int32 contexts.

    Documents are joined with ``eos_token_id`` between them (if given) and cut into chunks of
    ``context_length - 1`` stream tokens, each preceded by BOS (if ``prepend_bos`` and a BOS id
    are given), else chunks of ``context_length``. ``n = ceil(n_tokens / chunk)`` contexts are
    returned; a trailing partial chunk is never used. The second array gives, per position, the
    source document's index (``doc_indices[i]`` for ``token_lists[i]``, default ``i``), -1 for
    BOS and EOS. Raises ValueError if the documents are too short for the budget.
    """
    chunk = _chunk_length(context_length, bos_token_id, prepend_bos)
    with_bos = prepend_bos and bos_token_id is not None
    if doc_indices is None:
        doc_indices = range(len(token_lists))
    elif len(doc_indices) != len(token_lists):
        raise ValueError(f"doc_indices has {len(doc_indices)} entries for "
                         f"{len(token_lists)} documents")
    n_contexts = math.ceil(max(n_tokens, 0) / chunk)
    needed = n_contexts * chunk

    tok_parts: list[np.ndarray] = []
    id_parts: list[np.ndarray] = []
    have = 0
    for i, (tokens, doc) in enumerate(zip(token_lists, doc_indices, strict=True)):
        if have >= needed:
            break
        arr = _as_tokens(tokens, i)
        if arr.size == 0:
            continue  # an empty document would only add a second separator
        if tok_parts and eos_token_id is not None:
            tok_parts.append(np.array([eos_token_id], dtype=np.int64))
            id_parts.append(np.array([-1], dtype=np.int64))
            have += 1
        tok_parts.append(arr)
        id_parts.append(np.full(arr.size, doc, dtype=np.int64))
        have += arr.size
    if have < needed:
        raise ValueError(
            f"requested {n_tokens} tokens ({n_contexts} contexts of {chunk} tokens after BOS, "
            f"{needed} in all), but the {len(token_lists)} documents provide only {have} "
            f"(EOS separators included)"
        )
    if n_contexts == 0:
        empty = np.zeros((0, context_length), dtype=np.int32)
        return empty, empty.copy()
    stream = np.concatenate(tok_parts)[:needed].reshape(n_contexts, chunk)
    ids = np.concatenate(id_parts)[:needed].reshape(n_contexts, chunk)
    if with_bos:
        stream = np.concatenate([np.full((n_contexts, 1), bos_token_id), stream], axis=1)
        ids = np.concatenate([np.full((n_contexts, 1), -1), ids], axis=1)
    return stream.astype(np.int32), ids.astype(np.int32)


def _strip_specials(tokens: list[int], bos_token_id: int | None,
                    eos_token_id: int | None) -> list[int]:
    """Drop a BOS/EOS that the tokenizer itself added; contexts place their own."""
    start, end = 0, len(tokens)
    if bos_token_id is not None and end > 0 and tokens[0] == bos_token_id:
        start = 1
    if eos_token_id is not None and end > start and tokens[end - 1] == eos_token_id:
        end -= 1
    return list(tokens[start:end])


def tokenize_corpus(docs: Sequence[Document], encode: Callable[[str], Sequence[int]],
                    bos_token_id: int | None, eos_token_id: int | None, context_length: int,
                    train_tokens: int, eval_tokens: int, seed: int,
                    prepend_bos: bool = True, eval_documents: int = 1) -> dict[str, Any]:
    """Tokenize documents and cut them into train and eval contexts, split by document.

    ``train_tokens``/``eval_tokens`` count stream positions after BOS (text tokens and EOS
    separators); each split gets the smallest number of whole contexts that covers its budget.
    The eval split holds at least ``eval_documents`` documents (see :func:`split_documents`);
    within each split every document contributes an even share of the budget, at least one
    context's worth where the budget allows (:func:`document_windows`; windows drawn with
    ``default_rng([seed, split])``). A leading BOS
    or trailing EOS that ``encode`` adds itself is removed first.

    Returns ``{"train": {...}, "eval": {...}, "context_length", "seed", "prepend_bos",
    "bos_token_id", "eos_token_id"}`` where each split holds ``contexts`` and ``doc_ids``
    ((n, T) int32; doc ids index ``docs``), ``documents`` (the ids of the documents assigned
    to the split, in shuffled order), ``doc_indices`` (their positions in ``docs``),
    ``document_tokens`` (text tokens each of those documents has in the contexts),
    ``n_tokens_requested`` and ``n_documents_used`` (documents with tokens in the contexts).
    """
    token_lists = [
        np.asarray(_strip_specials(list(encode(doc["text"])), bos_token_id, eos_token_id),
                   dtype=np.int64)
        for doc in progress(docs, total=len(docs), desc="tokenizing", unit="doc")
    ]
    separator = 1 if eos_token_id is not None else 0
    # With k documents the stream has sum(len) + (k - 1) separators; counting one separator per
    # document, the eval documents are long enough once the counts reach needed + separator.
    counts = [len(t) + separator if len(t) else 0 for t in token_lists]
    eval_needed = stream_tokens_needed(eval_tokens, context_length, bos_token_id, prepend_bos)
    train_idx, eval_idx = split_documents(
        counts, eval_needed + separator if eval_needed else 0, seed,
        min_eval_documents=eval_documents)

    result: dict[str, Any] = {
        "context_length": context_length, "seed": seed, "prepend_bos": prepend_bos,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }
    for number, (split, idx, budget) in enumerate((("train", train_idx, train_tokens),
                                                   ("eval", eval_idx, eval_tokens))):
        needed = stream_tokens_needed(budget, context_length, bos_token_id, prepend_bos)
        # the windows carry the text; the k - 1 separators between them are surplus that the
        # last context trims off the end of the stream
        lists = [token_lists[i] for i in idx]
        if sum(len(t) for t in lists) < needed:
            raise ValueError(
                f"{split} split ({len(idx)} of {len(docs)} documents): requested {budget} "
                f"tokens ({needed} in whole contexts), but the documents provide only "
                f"{sum(len(t) for t in lists)}")
        try:
            windows = document_windows(lists, needed, np.random.default_rng([seed, number]),
                                       min_share=_chunk_length(context_length, bos_token_id,
                                                               prepend_bos))
            contexts, doc_ids = make_contexts(
                windows, context_length, budget, bos_token_id, eos_token_id, prepend_bos,
                doc_indices=[int(i) for i in idx])
        except ValueError as err:
            raise ValueError(f"{split} split ({len(idx)} of {len(docs)} documents): {err}") \
                from err
        per_doc = np.bincount(doc_ids[doc_ids >= 0], minlength=len(docs))
        result[split] = {
            "contexts": contexts, "doc_ids": doc_ids,
            "documents": [docs[int(i)]["id"] for i in idx],
            "doc_indices": np.asarray(idx, dtype=np.int64),
            "document_tokens": per_doc[np.asarray(idx, dtype=np.int64)],
            "n_tokens_requested": budget, "n_documents_used": int((per_doc > 0).sum()),
        }
        log.info("%s: %d contexts of %d from %d documents (%d assigned)", split,
                 contexts.shape[0], context_length, result[split]["n_documents_used"], len(idx))
    return result


def save_tokens(out_dir: str | os.PathLike, result: dict[str, Any],
                meta: dict[str, Any] | None = None) -> None:
    """Write a :func:`tokenize_corpus` result as one directory, atomically."""
    summary: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "context_length": result["context_length"], "seed": result["seed"],
        "prepend_bos": result["prepend_bos"], "bos_token_id": result["bos_token_id"],
        "eos_token_id": result["eos_token_id"], "meta": meta or {},
    }
    with io.atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            part = result[split]
            contexts, doc_ids = part["contexts"], part["doc_ids"]
            np.save(tmp / f"{split}.npy", contexts.astype(np.int32, copy=False))
            np.save(tmp / f"{split}_doc_ids.npy", doc_ids.astype(np.int32, copy=False))
            text = doc_ids >= 0
            summary[split] = {
                "n_contexts": int(contexts.shape[0]),
                "n_positions": int(contexts.size),
                "n_text_tokens": int(text.sum()),
                "n_tokens_requested": int(part["n_tokens_requested"]),
                "n_documents": len(part["documents"]),
                "n_documents_used": int(part["n_documents_used"]),
                "documents": list(part["documents"]),
                "doc_indices": [int(i) for i in part["doc_indices"]],
                "document_tokens": [int(n) for n in part["document_tokens"]],
            }
        io.write_json(tmp / "split.json", summary)


def load_tokens(token_dir: str | os.PathLike, split: str,
                mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(contexts, doc_ids)`` of one split of a directory written by :func:`save_tokens`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    token_dir = Path(token_dir)
    info = io.read_json(token_dir / "split.json", what="token split summary (split.json)")
    if (not isinstance(info, dict) or info.get("format") != FORMAT
            or not isinstance(info.get(split), dict) or "n_contexts" not in info[split]
            or "context_length" not in info):
        raise io.InputError(f"{token_dir / 'split.json'}: expected a {FORMAT} summary with "
                            f"'context_length' and '{split}.n_contexts'")
    arrays = []
    for name in (f"{split}.npy", f"{split}_doc_ids.npy"):
        path = token_dir / name
        if not path.is_file():
            raise io.InputError(f"{path}: expected the {split} token arrays, but the file does "
                                "not exist")
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as err:
            raise io.InputError(f"{path}: expected a .npy array ({err})") from err
        expected_shape = (info[split]["n_contexts"], info["context_length"])
        if arr.dtype != np.int32 or arr.shape != expected_shape:
            raise io.InputError(f"{path}: expected int32 of shape {expected_shape}, got "
                                f"{arr.dtype} of shape {arr.shape}")
        arrays.append(arr)
    return arrays[0], arrays[1]


def context_documents(doc_ids: np.ndarray) -> np.ndarray:
    """The document of each context: the one that holds most of its text positions (-1 for a
    context without text)."""
    doc_ids = np.asarray(doc_ids)
    out = np.full(doc_ids.shape[0], -1, dtype=np.int64)
    for c, row in enumerate(doc_ids):
        docs, n = np.unique(row[row >= 0], return_counts=True)
        if docs.size:
            out[c] = docs[np.argmax(n)]
    return out


def sample_contexts_by_document(doc_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` contexts spread over the documents: round-robin over the documents in a
    seeded order, a seeded random context of each document per round (sorted indices; all
    contexts when ``n`` exceeds their number). A loss measured on a handful of contexts then
    samples many documents instead of the first one or two."""
    owner = context_documents(doc_ids)
    rng = np.random.default_rng(seed)
    docs = rng.permutation(np.unique(owner[owner >= 0]))
    queues = [list(rng.permutation(np.flatnonzero(owner == d))) for d in docs]
    queues.append(list(rng.permutation(np.flatnonzero(owner < 0))))  # text-free contexts last
    picked: list[int] = []
    while len(picked) < min(n, len(owner)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop()))
    return np.sort(np.asarray(picked, dtype=np.int64))


__all__ = [
    "context_documents",
    "document_windows",
    "even_shares",
    "load_tokens",
    "make_contexts",
    "sample_contexts_by_document",
    "save_tokens",
    "split_documents",
    "stream_tokens_needed",
    "tokenize_corpus",
]
