"""Training checkpoints: model, optimiser and scheduler state, valid for one recipe only.

A checkpoint is ``<dir>/checkpoint/`` with ``state.json`` (step and the fingerprint of what is
being trained) and ``state.pt`` (``state_dict`` of the model, of ``torch.optim.Adam`` and of the
learning-rate scheduler, read back with ``weights_only=True``). It is written atomically, so a
killed job leaves either the previous checkpoint or the new one. A checkpoint whose fingerprint
differs from the run's (the recipe, seeds or cache changed since) is stale: it is deleted and
training starts over.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..activations import ActivationCache
from ..logs import get_logger
from .config import IMPL_FIELDS, TrainConfig

log = get_logger("training")

CHECKPOINT_FORMAT = "saestab.train-checkpoint/3"  # 3: the encoder stored as W_enc_t


def fingerprint(cfg: TrainConfig, init_seeds: Sequence[int], data_seed: int,
                cache: ActivationCache,
                init: Sequence[Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """What a checkpoint belongs to: the recipe (less implementation choices), seeds, cache."""
    fp: dict[str, Any] = {
        "cfg": {k: v for k, v in cfg.to_json().items() if k not in IMPL_FIELDS},
        "init_seeds": [int(s) for s in init_seeds], "data_seed": int(data_seed),
        "n_tokens_cache": cache.n_tokens, "d_in": cache.d,
        "mean_sq_norm": cache.stats.mean_sq_norm}
    if init is not None:  # continued training: the checkpoint belongs to these tensors only
        fp["init_sha256"] = [io.sha256_bytes(b"".join(
            t[n].detach().float().cpu().contiguous().numpy().tobytes() for n in sorted(t)))
            for t in init]
    return json.loads(json.dumps(fp))


@dataclass
class Trainable:
    """What a checkpoint saves and restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def write_checkpoint(directory: Path, state: Trainable, step: int, fp: dict[str, Any]) -> None:
    with io.atomic_path(directory / "checkpoint") as tmp:
        tmp.mkdir()
        torch.save({"model": state.model.state_dict(),
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict()}, tmp / "state.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"format": CHECKPOINT_FORMAT, "step": step, "fingerprint": fp}, indent=1) + "\n")


def resume(directory: Path | None, state: Trainable, fp: dict[str, Any]) -> int:
    """Restore ``state`` from ``directory``'s checkpoint; return its step (0: none usable).

    A checkpoint of another recipe, seed set or cache, an older format or an unreadable one is
    removed with a log line, so a changed recipe after a killed job starts over.
    """
    where = directory / "checkpoint" if directory is not None else None
    if where is None or not where.exists():
        return 0
    problem = _problem(where, fp)
    if problem is None:
        try:
            saved = torch.load(where / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            problem = f"unreadable state.pt ({err})"
    if problem is None:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        return int(io.read_json(where / "state.json")["step"])
    log.warning("%s: %s; starting over", where, problem)
    shutil.rmtree(where)
    return 0


def _problem(where: Path, fp: dict[str, Any]) -> str | None:
    try:
        meta = io.read_json(where / "state.json", what="training checkpoint state")
    except io.InputError as err:
        return str(err)
    if meta.get("format") != CHECKPOINT_FORMAT:
        return f"format {meta.get('format')!r}, not {CHECKPOINT_FORMAT!r}"
    if meta.get("fingerprint") != fp:
        return "written for a different recipe, seed set or cache"
    return None
