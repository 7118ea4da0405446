"""Documents to fixed-length token contexts, with a train/eval split by document.

A tokenizer is any ``encode(text) -> list[int]`` callable plus optional BOS/EOS ids. Documents
are shuffled with a seeded generator; the first ones go to the eval split until its token budget
is met, the rest to train, so no document contributes to both. Within a split the documents'
tokens are concatenated with an EOS separator between documents and cut into contexts, each
starting with BOS.

On-disk layout of a token set (a directory)::

    train.npy, eval.npy                  (n, T) int32 token contexts
    train_doc_ids.npy, eval_doc_ids.npy  (n, T) int32: index of the source document (its position
                                         in the corpus) per position, -1 for BOS/EOS
    split.json                           documents per split, token counts, seed, T, meta
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


def split_documents(token_counts: Sequence[int], eval_tokens: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split documents by index into (train, eval), each in shuffled order.

    Document indices are shuffled with ``numpy.random.default_rng(seed)``; documents go to eval
    in that order until their ``token_counts`` sum to at least ``eval_tokens``, the rest to
    train. Raises ValueError if all documents together do not meet the eval budget.
    """
    counts = np.asarray(token_counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("token_counts must be a sequence of non-negative integers")
    order = np.random.default_rng(seed).permutation(len(counts))
    if eval_tokens <= 0:
        return order, order[:0]
    cumulative = np.cumsum(counts[order])
    reached = np.flatnonzero(cumulative >= eval_tokens)
    if reached.size == 0:
        raise ValueError(f"eval split: requested {eval_tokens} tokens, but all {len(counts)} "
                         f"documents together have only {int(counts.sum())}")
    n_eval = int(reached[0]) + 1
    return order[n_eval:], order[:n_eval]


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
                    prepend_bos: bool = True) -> dict[str, Any]:
    """Tokenize documents and cut them into train and eval contexts, split by document.

    ``train_tokens``/``eval_tokens`` count stream positions after BOS (text tokens and EOS
    separators); each split gets the smallest number of whole contexts that covers its budget.
    A leading BOS or trailing EOS that ``encode`` adds itself is removed first.

    Returns ``{"train": {...}, "eval": {...}, "context_length", "seed", "prepend_bos",
    "bos_token_id", "eos_token_id"}`` where each split holds ``contexts`` and ``doc_ids``
    ((n, T) int32; doc ids index ``docs``), ``documents`` (the ids of the documents assigned
    to the split, in shuffled order), ``doc_indices`` (their positions in ``docs``),
    ``n_tokens_requested`` and ``n_documents_used`` (documents with tokens in the contexts).
    """
    token_lists = [
        _strip_specials(list(encode(doc["text"])), bos_token_id, eos_token_id)
        for doc in progress(docs, total=len(docs), desc="tokenizing", unit="doc")
    ]
    separator = 1 if eos_token_id is not None else 0
    # With k documents the stream has sum(len) + (k - 1) separators; counting one separator per
    # document, the eval stream is long enough once the counts reach needed + separator.
    counts = [len(t) + separator if t else 0 for t in token_lists]
    eval_needed = stream_tokens_needed(eval_tokens, context_length, bos_token_id, prepend_bos)
    train_idx, eval_idx = split_documents(
        counts, eval_needed + separator if eval_needed else 0, seed)

    result: dict[str, Any] = {
        "context_length": context_length, "seed": seed, "prepend_bos": prepend_bos,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }
    for split, idx, budget in (("train", train_idx, train_tokens),
                               ("eval", eval_idx, eval_tokens)):
        try:
            contexts, doc_ids = make_contexts(
                [token_lists[i] for i in idx], context_length, budget, bos_token_id,
                eos_token_id, prepend_bos, doc_indices=[int(i) for i in idx])
        except ValueError as err:
            raise ValueError(f"{split} split ({len(idx)} of {len(docs)} documents): {err}") \
                from err
        used = np.unique(doc_ids[doc_ids >= 0])
        result[split] = {
            "contexts": contexts, "doc_ids": doc_ids,
            "documents": [docs[int(i)]["id"] for i in idx],
            "doc_indices": np.asarray(idx, dtype=np.int64),
            "n_tokens_requested": budget, "n_documents_used": int(used.size),
        }
        log.info("%s: %d contexts of %d from %d documents (%d assigned)", split,
                 contexts.shape[0], context_length, used.size, len(idx))
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


__all__ = [
    "load_tokens",
    "make_contexts",
    "save_tokens",
    "split_documents",
    "stream_tokens_needed",
    "tokenize_corpus",
]
