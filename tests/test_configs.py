"""The paper-scale studies under configs/: they validate, name hub models and a hub dataset, and
their DAG builds (snakemake -n) with the expected number of training jobs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saestab.config import validate_config

from .conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_paper_scale_configs() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"gpt2_small", "pythia_160m", "gemma2_2b", "gpt2_small_size_sweep"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_paper_scale(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    cfg = validate_config(raw, source=str(path))
    assert path.read_text().startswith("# "), "a header comment with the expected compute"
    assert "GPU-hours" in path.read_text()
    assert cfg["corpus"]["source"] == "hf_dataset" and cfg["corpus"]["hf_dataset"]["name"]
    for spec in cfg["models"].values():
        assert spec["source"] == "hub" and spec["name"]
        assert re.fullmatch(r"[0-9a-f]{40}", spec["revision"]), "a hub model pinned to a commit"
    assert re.fullmatch(r"[0-9a-f]{40}", cfg["corpus"]["hf_dataset"]["revision"]), \
        "the dataset pinned to a commit"
    assert cfg["sae"]["n_seeds"] == 96
    assert cfg["stability"]["theta"] == 0.7 and cfg["stability"]["eps"] == 0.05
    variants = cfg["sae"]["variants"]
    trained = cfg["sae"]["runs"]["trained"]
    assert all(v in variants for w in cfg["weights"] for v in cfg["sae"]["runs"].get(w, []))
    # the paper's main setting is in every study: TopK, k = 64, 16,384 latents
    assert any(variants[v]["architecture"] == "topk" and variants[v]["d_sae"] == 16384
               and variants[v]["k"] == 64 for v in trained)
    if path.stem != "gpt2_small_size_sweep":
        assert {variants[v]["architecture"] for v in trained} == {
            "relu", "topk", "batchtopk", "jumprelu", "matryoshka"}
    else:
        assert len({variants[v]["d_sae"] for v in trained}) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_dry_runs(path: Path, tmp_path: Path) -> None:
    """``snakemake -n`` builds the whole DAG (~4 s per 96-seed study on 2 cores)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(path)],
        capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    cfg = validate_config(yaml.safe_load(path.read_text()))
    s = cfg["sae"]
    groups = -(-s["n_seeds"] // s["group_size"])
    n_configs = sum(len(s["runs"].get(w, [])) for w in cfg["weights"]) * \
        sum(len(m["hooks"]) for m in cfg["models"].values())
    n_synth = len(cfg["synthetic"]["models"]) * len(cfg["synthetic"]["runs"])
    assert int(counts["train_saes"]) == groups * (n_configs + n_synth)
    assert int(counts["stability_census"]) == n_configs + n_synth
    assert int(counts["pool_saes"]) == n_configs
    assert int(counts["fetch_hub_model"]) == len(cfg["models"])  # one download per hub model
    # the header states the job count of the dry run
    assert f"jobs: {counts['total']} " in path.read_text()
