"""One training job of the workflow: its work area, its manifest, and the check of its outputs.

A job trains the seeds of one configuration (one or several :func:`~.loop.train_group` runs)
into ``<work>/staging`` beside their checkpoints, then moves the staging area onto the rule's
output. A killed job leaves the work area behind; the next job reuses it only if it was made for
the same job (``<work>/job.json`` holds the job's fingerprint: recipe, seeds, data seeds,
snapshot epochs, cache), and otherwise starts from an empty one, so seeds or snapshots of an
earlier recipe never reach the outputs. The output carries ``manifest.json``: the seeds and
snapshot epochs it must hold, which :func:`check_outputs` verifies for readers such as the
stability census.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..activations import ActivationCache
from ..logs import get_logger
from .config import IMPL_FIELDS, TrainConfig
from .loop import RunOptions, TrainResult, train_group

log = get_logger("training")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "saestab.train-manifest"


@dataclass
class Job:
    """What a training job trains: a recipe, groups of init seeds (each with its data seed)
    trained in one pass of the data each, and the epochs after which snapshots are saved."""

    cfg: TrainConfig
    runs: list[tuple[list[int], int]]
    snapshots: list[int]

    @property
    def seeds(self) -> list[int]:
        return sorted(s for seeds, _ in self.runs for s in seeds)

    def fingerprint(self, cache: ActivationCache) -> dict[str, Any]:
        return {"recipe": {k: v for k, v in self.cfg.to_json().items() if k not in IMPL_FIELDS},
                "runs": [[list(map(int, s)), int(d)] for s, d in self.runs],
                "snapshots": sorted(map(int, self.snapshots)),
                "cache": {"n_tokens": cache.n_tokens, "d": cache.d,
                          "mean_sq_norm": cache.stats.mean_sq_norm}}


def remove_temporaries(directory: Path, name: str | None = None) -> None:
    """Delete leftover ``.<name>.*.tmp`` siblings (of any name if None) in ``directory`` and
    below, the partial writes of :func:`saestab.io.atomic_path` in a killed process."""
    if not directory.is_dir():
        return
    for p in sorted(directory.rglob(f".{name}.*.tmp" if name else ".*.tmp")):
        log.info("removing the leftover temporary %s", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def prepare_work_dir(work: Path, fp: dict[str, Any]) -> Path:
    """``work`` ready for this job: kept if a killed run of the same job left it, else emptied.
    Returns the staging directory."""
    job_file = work / "job.json"
    if work.exists():
        same = job_file.is_file() and io.read_json(job_file) == fp
        if not same:
            log.info("%s: left by a different job (recipe, seeds or snapshots); starting over",
                     work)
            shutil.rmtree(work)
        else:
            log.info("%s: resuming an interrupted run of this job", work)
            remove_temporaries(work)
    work.mkdir(parents=True, exist_ok=True)
    io.write_json(job_file, fp)
    return work / "staging"


def train_job(cache: ActivationCache, job: Job, work: Path, device: str | torch.device = "cpu",
              checkpoint_every: int = 500,
              callback: Callable[[int], None] | None = None) -> tuple[Path, list[TrainResult]]:
    """Train every run of ``job`` into ``<work>/staging`` and write its manifest there.

    Returns the staging directory (``seed<s>/`` and ``snapshots/epoch<e>/seed<s>/``) and the
    runs' results. ``callback`` is passed to :class:`~.loop.RunOptions` (tests interrupt with it).
    """
    fp = job.fingerprint(cache)
    staging = prepare_work_dir(work, fp)
    results = []
    for seeds, data_seed in job.runs:
        opts = RunOptions(out_dirs=[staging / f"seed{s}" for s in seeds], device=device,
                          checkpoint_dir=work / f"checkpoint-seeds{'-'.join(map(str, seeds))}",
                          checkpoint_every=checkpoint_every, snapshots_at_epochs=job.snapshots,
                          callback=callback)
        results.append(train_group(cache, job.cfg, seeds, data_seed, opts))
    write_manifest(staging, job.seeds, results[0].snapshot_epochs, fp)
    return staging, results


def write_manifest(directory: Path, seeds: Sequence[int], snapshot_epochs: Sequence[int],
                   fp: dict[str, Any]) -> None:
    io.write_json(directory / MANIFEST, {
        "format": MANIFEST_FORMAT, "seeds": sorted(map(int, seeds)),
        "snapshot_epochs": sorted(map(int, snapshot_epochs)), "job": fp})


def manifest_dirs(directory: Path, manifest: dict[str, Any]) -> list[Path]:
    """The SAE directories a manifest lists: final SAEs first, then snapshots by epoch."""
    finals = [directory / f"seed{s}" for s in manifest["seeds"]]
    return finals + [directory / "snapshots" / f"epoch{e}" / f"seed{s}"
                     for e in manifest["snapshot_epochs"] for s in manifest["seeds"]]


def check_outputs(directory: str | Path) -> dict[str, Any]:
    """The manifest of a training job's output ``directory``, after checking that the
    directory holds exactly the SAEs (final and snapshots) it lists.

    Raises :class:`saestab.io.InputError` naming the directory, the difference and the fix.
    """
    directory = Path(directory)
    fix = f"delete {directory} and rerun the train_saes job that writes it"
    if not (directory / MANIFEST).is_file():
        raise io.InputError(f"{directory}: no {MANIFEST} (written by an older or an interrupted "
                            f"training job); {fix}")
    manifest = io.read_json(directory / MANIFEST, what="training manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise io.InputError(f"{directory / MANIFEST}: not a training manifest; {fix}")
    want = {str(p.relative_to(directory)) for p in manifest_dirs(directory, manifest)}
    have = {str(p.parent.relative_to(directory)) for p in directory.rglob("cfg.json")}
    if want != have:
        raise io.InputError(f"{directory}: holds SAEs that its {MANIFEST} does not list "
                            f"({sorted(have - want)}) or lacks ones it lists "
                            f"({sorted(want - have)}); {fix}")
    return manifest


def finish_job(staging: Path, out: Path, work: Path) -> None:
    """Move a checked staging area onto the rule's output and remove the work area."""
    check_outputs(staging)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    if work.parent.is_dir() and not any(work.parent.iterdir()):
        work.parent.rmdir()  # the variant's .work/ once no group is in progress
