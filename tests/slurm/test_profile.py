"""The `slurm` profile without a cluster: how Snakemake resolves it and what the plugin submits.

tests/slurm/test_slurm.py runs the workflow on a real one-node cluster; these checks are quick.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from ..conftest import REPO, synthetic_documents

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def test_profile_is_found_as_typed_from_the_repo_root():
    assert (REPO / "slurm").resolve() == PROFILE.parent
    prof = yaml.safe_load(PROFILE.read_text())
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"  # clusters without accounting
    assert prof["retries"] >= 1
    assert {"runtime", "mem_mb"} <= set(prof["default-resources"])
    # the local GPU limit of the workflow profile is scoped so that it binds only local runs
    local = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert local["resources"]["gpu"] == 1 and local["set-resource-scopes"]["gpu"] == "local"


def _dry_run_jobs(tmp_path: Path, *args: str) -> tuple[str, dict[str, str]]:
    (tmp_path / "corpus").mkdir(parents=True)
    for i, text in enumerate(synthetic_documents(n_docs=4)):
        (tmp_path / "corpus" / f"doc{i}.txt").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n",
                           "--directory", str(tmp_path), "--configfile", "tests/config.yaml",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    blocks = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            blocks.setdefault(m.group(1), block)
    return out, blocks


def gpu_rules() -> set[str]:
    """Rules whose resources ask for gpu=gpu_request() (one GPU when the device is cuda)."""
    out = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            if m and "gpu=gpu_request()" in block:
                out.add(m.group(1))
    return out


def test_dry_run_through_the_profile_requests_gpus_where_rules_declare_them(tmp_path):
    declared = gpu_rules()
    assert {"cache_activations", "train_saes"} <= declared
    out, jobs = _dry_run_jobs(tmp_path / "cuda", "--config", "device=cuda")
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    assert {"cache_activations", "train_saes", "stability_census", "tokenize"} <= set(jobs)
    for rule, block in jobs.items():
        assert ("gpu=1" in block) == (rule in declared), block
    # `threads: workflow.cores` resolves to the profile's cores: the CPUs of one SLURM job
    cores = yaml.safe_load(PROFILE.read_text())["cores"]
    assert f"threads: {cores}" in jobs["train_saes"]
    assert "mem_mb=8000" in jobs["train_saes"] and "mem_mb=4000" in jobs["tokenize"]
    # tests/config.yaml says device: cpu, and then no job asks for a GPU
    _, jobs = _dry_run_jobs(tmp_path / "cpu")
    assert not [rule for rule, block in jobs.items() if "gpu=1" in block]


def test_plugin_turns_the_gpu_resource_into_sbatch_gpus():
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        def __init__(self, **res):
            self.resources = Resources(res)
            self.threads = 8

    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="",
                  partition="", workdir="/w")
    gpu = Job(gpu=1, mem_mb=8000, runtime=240)
    call = get_submit_command(gpu, params) + set_gres_string(gpu)
    assert "--gpus=1" in call and "--cpus-per-task=8" in call
    assert "--mem 8000" in call and "-t 240" in call
    cpu = Job(gpu=0, mem_mb=8000, runtime=60)  # gpu_request() is 0 unless device is cuda
    assert "--gpus" not in get_submit_command(cpu, params) + set_gres_string(cpu)


def test_cluster_test_skips_with_a_reason_without_root_or_sudo(monkeypatch, capsys):
    from . import run

    monkeypatch.setattr(run.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(run, "which", lambda name: None)  # no sudo
    assert run.main([]) == run.SKIP
    assert "SKIPPED: needs root or passwordless sudo" in capsys.readouterr().out
