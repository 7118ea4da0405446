"""A training job killed with SIGKILL (with all of snakemake) resumes to the same SAEs.

The trainer-level resume test raises inside the trainer; this one kills the whole snakemake
process group from outside, as a scheduler or an out-of-memory killer would, while
``train_saes`` runs on the tiny test configuration, then reruns snakemake and compares every
saved SAE (final and snapshots) with those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saestab import training
from saestab.sae import load_sae

from .conftest import REPO, synthetic_documents

pytestmark = pytest.mark.workflow

GROUP = "results/tiny/trained/blocks.1.hook_resid_post/saes/topk/group0"
CHECKPOINT = (f"{Path(GROUP).parent}/.work/group0/checkpoint-seeds0-1/checkpoint/state.json")


def command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(REPO / "tests" / "config.yaml"),
            "--cores", "2", *args]


def snakemake(workdir: Path, *args: str) -> None:
    proc = subprocess.run(command(workdir, *args), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")


def kill_during_training(workdir: Path) -> None:
    """Start snakemake in its own process group and SIGKILL the group once the training job
    has written its first checkpoint (so the kill lands mid-training)."""
    proc = subprocess.Popen(command(workdir, GROUP), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (workdir / CHECKPOINT).is_file():
            assert proc.poll() is None, "snakemake ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def saved_saes(group: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.parent.relative_to(group)): load_sae(p.parent).state_tensors()
            for p in sorted(group.rglob("cfg.json"))}


def test_sigkill_during_training_then_rerun_is_bit_identical(tmp_path: Path) -> None:
    wd = tmp_path / "wf"
    (wd / "corpus").mkdir(parents=True)
    for i, text in enumerate(synthetic_documents()):
        (wd / "corpus" / f"doc{i:03d}.txt").write_text(text)
    snakemake(wd, GROUP)  # the uninterrupted reference (and the caches both runs share)
    reference = tmp_path / "reference"
    shutil.move(wd / GROUP, reference)

    kill_during_training(wd)
    assert not (wd / GROUP).exists()  # killed before the job moved its outputs in place
    snakemake(wd, "--unlock")
    snakemake(wd, "--rerun-incomplete", GROUP)

    summary = json.loads((wd / GROUP / "train_summary.json").read_text())
    assert summary["runs"][0]["resumed_from"] > 0  # it resumed, not restarted
    training.check_outputs(wd / GROUP)
    got, want = saved_saes(wd / GROUP), saved_saes(reference)
    assert got.keys() == want.keys() and len(want) == 2 + 2 * 2  # 2 seeds, 2 snapshot epochs
    for name, tensors in want.items():
        for key, t in tensors.items():
            assert torch.equal(got[name][key], t), f"{name}/{key}"
