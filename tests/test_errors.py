"""Errors where users look: a failed job's log file holds its traceback, and a truncated or corrupt
cache shard, ``.npz`` or Parquet file is reported with its path and what to do about it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from saestab import activations, io, matching, stability

from .conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"
RULES = REPO / "workflow" / "rules"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_uncaught_exception_lands_in_the_log_file(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        from saestab import logs
        log = logs.setup({str(log)!r})
        log.info("starting")
        def inner():
            raise ValueError("the input is wrong")
        inner()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    text = log.read_text()
    assert "starting" in text
    assert "job failed with ValueError" in text
    assert "Traceback (most recent call last)" in text and "in inner" in text
    assert text.rstrip().endswith("ValueError: the input is wrong")
    # stderr keeps exactly one traceback (the default hook's), not a second copy from the logger
    assert proc.stderr.count("Traceback (most recent call last)") == 1


def test_every_script_logs_to_its_rule_log_and_every_rule_has_one():
    """The traceback hook is installed by logs.setup(<snakemake>.log[0]); a script that skips it,
    or a rule without a log, would fail silently again."""
    for script in sorted(SCRIPTS.glob("*.py")):
        text = script.read_text()
        assert re.search(r"logs\.setup\((snakemake|sm)\.log\[0\]\)", text), script.name
    for smk in sorted(RULES.glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(),
                                     flags=re.M):
            if "script:" in body:
                assert re.search(r"^\s+log:", body, flags=re.M), f"{smk.name}: rule {name}"


def _cache(path: Path) -> activations.ActivationCache:
    ctx = np.random.default_rng(0).integers(0, 200, size=(4, 24))
    ctx[:, 0] = 256
    return activations.write_cache(path, lambda t: torch.randn(*t.shape, 8), ctx, d=8,
                                   bos_token_id=256, shard_tokens=40)


def test_truncated_cache_shard_names_the_file_and_the_rule(tmp_path):
    path = tmp_path / "results" / "m" / "trained" / "h" / "cache" / "train"
    _cache(path)
    _truncate(path / "acts-00001.npy")
    with pytest.raises(io.InputError) as err:
        activations.ActivationCache.open(path)
    msg = str(err.value)
    assert f"{path / 'acts-00001.npy'}: expected an activation shard" in msg
    assert "truncated or corrupt" in msg
    assert f"Delete the directory {path} and rerun snakemake (rule cache_activations" in msg


def test_truncated_shard_after_open_is_still_named(tmp_path):
    cache = _cache(tmp_path / "c")
    _truncate(tmp_path / "c" / "acts-00000.npy", keep=0.1)  # header too: numpy cannot parse it
    with pytest.raises(io.InputError, match=r"acts-00000\.npy: expected an activation shard, "
                                            r"but it is truncated or corrupt"):
        cache.load(0, 10)


def test_truncated_npz_is_named_with_the_remedy(tmp_path):
    path = tmp_path / "pairwise.npz"
    maxcos = np.random.default_rng(0).random((3, 3, 5)).astype(np.float32)
    matching.save_pairwise(path, maxcos, np.zeros((3, 3, 5), np.int32))
    assert matching.load_pairwise(path)[0].shape == (3, 3, 5)
    _truncate(path)
    with pytest.raises(io.InputError) as err:
        matching.load_pairwise(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: expected a pairwise max-cosine table (.npz), but it is "
                          "truncated or corrupt (BadZipFile")
    assert "Delete it and rerun snakemake" in msg


def test_npz_without_an_expected_array(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, maxcos=np.zeros(2))
    with pytest.raises(io.InputError, match=r"\['argmax'\] are missing"):
        io.load_npz(path, ("maxcos", "argmax"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_parquet_is_named_with_the_remedy(tmp_path, damage):
    path = tmp_path / "features.parquet"
    stability.write_table(pd.DataFrame({"a": np.arange(100), "b": np.ones(100)}), path)
    if damage == "truncate":
        _truncate(path)
    else:
        path.write_bytes(b"PAR1" + b"\x00" * 64)
    with pytest.raises(io.InputError) as err:
        stability.read_table(path)
    assert str(err.value).startswith(f"{path}: expected a stability table (Parquet), but it is "
                                     "truncated or corrupt")
    assert "Delete it and rerun snakemake" in str(err.value)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(io.InputError, match=r"x\.npy: expected a numpy array \(\.npy\), but the "
                                            r"file does not exist"):
        io.load_npy(tmp_path / "x.npy")
