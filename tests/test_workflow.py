"""End-to-end: snakemake on tests/config.yaml (tiny native model, synthetic corpus)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from saestab import figures, gallery
from saestab.activations import ActivationCache

from .conftest import REPO, synthetic_documents

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# A hang guard, not a speed test: the whole DAG (68 jobs) took 5 min alone on 2 cores and over
# 10 min beside the other pytest worker on a slow day.
TIMEOUT_S = 1800


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "tests" / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    (wd / "corpus").mkdir()
    for i, text in enumerate(synthetic_documents()):
        (wd / "corpus" / f"doc{i:03d}.txt").write_text(text)
    snakemake(wd, "--cores", "2")
    return wd


def test_workflow_outputs(workdir):
    base = workdir / "results" / "tiny"
    for weights in ("trained", "random"):
        hook_dir = base / weights / "blocks.1.hook_resid_post"
        train = ActivationCache.open(hook_dir / "cache" / "train")
        ev = ActivationCache.open(hook_dir / "cache" / "eval")
        assert train.d == 32 and train.header["weights"] == weights
        assert train.n_tokens >= 12000 * 0.9 and ev.n_tokens >= 2000 * 0.9
        assert train.n_shards == int(np.ceil(train.n_tokens / 5000))
    # train and eval contexts come from disjoint documents
    split = json.loads((base / "tokens" / "split.json").read_text())
    assert split["train"]["documents"] and split["eval"]["documents"]
    assert not set(split["train"]["documents"]) & set(split["eval"]["documents"])
    train_docs = np.unique(np.load(base / "tokens" / "train_doc_ids.npy"))
    eval_docs = np.unique(np.load(base / "tokens" / "eval_doc_ids.npy"))
    assert set(train_docs[train_docs >= 0]).isdisjoint(eval_docs[eval_docs >= 0])
    t = ActivationCache.open(base / "trained" / "blocks.1.hook_resid_post" / "cache" / "train")
    r = ActivationCache.open(base / "random" / "blocks.1.hook_resid_post" / "cache" / "train")
    np.testing.assert_array_equal(t.token_ids(), r.token_ids())  # same tokens, different weights
    assert not np.allclose(t.load(0, 100), r.load(0, 100))
    for log in ("logs/extract_corpus.log", "logs/tiny/tokenize.log",
                "logs/tiny/trained/blocks.1.hook_resid_post/cache_activations.log"):
        assert (workdir / log).stat().st_size > 0, log
    assert "tokens/s" in (workdir / "logs/tiny/trained/blocks.1.hook_resid_post/"
                          "cache_activations.log").read_text()


def test_workflow_saes_and_census(workdir):
    hook = "blocks.1.hook_resid_post"
    for weights, variants in (("trained", ("topk", "relu", "topk-dataseed")),
                              ("random", ("topk",))):
        for variant in variants:
            base = workdir / "results" / "tiny" / weights / hook / "saes" / variant
            seeds = sorted(p.parent.name for p in base.glob("group*/seed*/cfg.json"))
            assert seeds == ["seed0", "seed1", "seed2"]  # two jobs: {0, 1} and {2}
            for epoch in (1, 2):
                assert len(list(base.glob(f"group*/snapshots/epoch{epoch}/seed*/eval.json"))) == 3
            ev = json.loads((base / "group0" / "seed0" / "eval.json").read_text())
            # ReLU+L1 steered to the TopK k (L0 4 of d 32) pays for its L1 shrinkage: EV ~0.2
            # on this model (bench/target_l0.py), TopK ~0.5
            assert (0.1 if variant == "relu" else 0.3) < ev["ev"] <= 1.0, (weights, variant)
            cfg = json.loads((base / "group0" / "seed0" / "cfg.json").read_text())
            assert cfg["hook_name"] == hook and cfg["d_in"] == 32 and cfg["d_sae"] == 64
            meta = cfg["metadata"]  # what SAELens / SAEBench users read
            assert (meta["model_name"], meta["context_size"], meta["prepend_bos"]) == \
                ("tiny", 64, True)
            assert meta["dataset_path"] == "local text files corpus/*.txt"
            assert meta["model_weights"] == weights
            summary = json.loads((workdir / "results" / "tiny" / weights / hook / "stability" /
                                  variant / "summary.json").read_text())
            assert summary["n_seeds"] == 3
            fr = summary["stable"]["mean"] + summary["unstable"]["mean"] + \
                summary["middle"]["mean"]
            assert abs(fr - 1) < 1e-9
    # data order shared by the init seeds, or varied with them
    saes = workdir / "results" / "tiny" / "trained" / hook / "saes"
    for variant, data_seeds in (("topk", [0, 0, 0]), ("topk-dataseed", [0, 1, 2])):
        files = sorted(saes.glob(f"{variant}/group*/seed*/cfg.json"))
        cfgs = [json.loads(p.read_text()) for p in files]
        assert [c["seeds"]["init_seed"] for c in cfgs] == [0, 1, 2]
        assert [c["seeds"]["data_seed"] for c in cfgs] == data_seeds
    table = (workdir / "results" / "tables" / "table1.md").read_text().strip().splitlines()
    assert len(table) == 2 + 4
    for fig in ("stability_cdf", "p_hat_hist", "stability_vs_frequency", "theta_sweep",
                "labels_vs_n", "training_length", "table1"):
        png = workdir / "results" / "figures" / "census" / f"{fig}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", fig


def test_workflow_function_stage(workdir):
    hook = "blocks.1.hook_resid_post"
    for weights in ("trained", "random"):
        d = workdir / "results" / "tiny" / weights / hook / "function" / "topk"
        masking = json.loads((d / "masking_summary.json").read_text())
        assert masking["anchors"] == [0, 1, 2] and masking["ce_contexts"] == 4
        none = masking["sets"]["none"]
        assert none["delta_ev"]["mean"] == 0.0  # nothing masked, nothing lost
        assert abs(none["delta_ce_err"]["mean"]) < 1e-6  # error term kept: the clean run
        assert masking["sets"]["all"]["delta_ev"]["mean"] > 0
        surface = json.loads((d / "surface_summary.json").read_text())
        assert surface["anchors"] == [0, 1, 2]
        html = (d / "browser.html").read_text()
        assert html.startswith("<!doctype html>") and "<mark>" in html
    for fig in ("masking_ev", "masking_ce", "frequency", "surface_form"):
        png = workdir / "results" / "figures" / "function" / f"{fig}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", fig


def test_workflow_pool_stage(workdir):
    hook = "blocks.1.hook_resid_post"
    for weights, variants in (("trained", ("topk", "relu")), ("random", ("topk",))):
        for variant in variants:
            d = workdir / "results" / "tiny" / weights / hook / "pool" / variant
            s = json.loads((d / "summary.json").read_text())
            assert s["subsets"] == [[0, 1], [2]] and s["post_train_tokens"] == 512
            assert s["mutual_stability"]["standard"]["n"] == 4  # (0,2) (1,2) (2,0) (2,1)
            assert s["ev"]["standard"]["n"] == 3 and s["ev"]["pool_before"]["n"] == 2
            assert all(0 < p["n_unique"] and p["n_filled"] == max(0, 64 - p["n_unique"])
                       for p in s["pools"])
            assert 0 < s["ev"]["pool_after"]["mean"] <= 1
            pooled = json.loads((d / "saes" / "pool1" / "after" / "cfg.json").read_text())
            assert pooled["metadata"]["context_size"] == 64
    assert not (workdir / "results" / "tiny" / "trained" / hook / "pool" / "topk-dataseed").exists()
    table = (workdir / "results" / "tables" / "pool_table.md").read_text().strip().splitlines()
    assert len(table) == 2 + 3
    png = workdir / "results" / "figures" / "pool" / "pool_stability.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_workflow_geometry_and_synthetic_stages(workdir):
    toy = workdir / "results" / "toy" / "synthetic" / "features"
    cache = ActivationCache.open(toy / "cache" / "train")
    assert cache.header["weights"] == "synthetic" and (cache.n_tokens, cache.d) == (4096, 16)
    seeds = sorted(p.parent.name for p in toy.glob("saes/synth-topk/group*/seed*/cfg.json"))
    assert seeds == ["seed0", "seed1", "seed2"]  # the same train_saes rule, two jobs
    assert json.loads((toy / "stability/synth-topk/summary.json").read_text())["n_seeds"] == 3
    rec = json.loads((toy / "recovery/synth-topk/summary.json").read_text())
    assert [(r["kind"], r["rank"]) for r in rec["by_rank"]] == [("group", 1), ("group", 4),
                                                                ("point", 1)]
    for c in ("tiny/trained/blocks.1.hook_resid_post/geometry/topk",
              "tiny/random/blocks.1.hook_resid_post/geometry/topk",
              "toy/synthetic/features/geometry/synth-topk"):
        s = json.loads((workdir / "results" / c / "summary.json").read_text())
        assert s["n_seeds"] == 3 and s["energy"] == 0.9, c
    for fig in ("geometry/spectra", "geometry/rank_vs_count", "geometry/transfer",
                "geometry/angles", "synthetic/recovery_by_rank",
                "synthetic/stability_vs_recovery"):
        png = workdir / "results" / "figures" / f"{fig}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", fig
    # the census figures and Table 1 keep to the real model's configurations
    assert "toy" not in (workdir / "results" / "tables" / "table1.md").read_text()


def test_workflow_writes_every_figure_as_png_and_pdf(workdir):
    """Every figure of the run (the gallery's and the rest) has its PDF beside its PNG."""
    pngs = sorted((workdir / "results" / "figures").rglob("*.png"))
    assert len(pngs) >= len(gallery.MAIN_FIGURES)
    for png in pngs:
        assert Path(figures.vector(png)).read_bytes()[:5] == b"%PDF-", png


def test_workflow_summary(workdir):
    rows = json.loads((workdir / "results" / "summary.json").read_text())["rows"]
    ids = {r["id"]: r for r in rows}
    assert {r["kind"] for r in rows} == {"claim", "null", "random-weights"}
    for cid in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "control"):
        assert cid in ids and ids[cid]["verdict"] != "not run", cid
        assert ids[cid]["convergence"], cid  # every claim row says where its SAEs stand
    # a known negative that passes its claim's rule would be a bug in the rule
    for r in rows:
        assert r["verdict"] in ("reproduced", "not reproduced", "inconclusive", "not run")
        if r["kind"] == "null":
            assert r["rule_verdict"] is None and r["verdict"] != "reproduced", r["id"]
    assert ids["C5 null: isotropic Gaussian data"]["verdict"] != "not run"
    md = (workdir / "results" / "summary.md").read_text()
    assert "Data:" in md and "documents" in md


def test_second_run_has_nothing_to_do(workdir):
    proc = snakemake(workdir, "--cores", "2", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_parallel_jobs_shares_the_cores_and_reruns_nothing(workdir):
    def threads(*config: str) -> set[str]:
        plan = snakemake(workdir, "--cores", "2", "-n", "--forcerun", "train_saes",
                         *config).stdout
        jobs = plan.split("\nrule ")[1:]
        return {line.strip() for job in jobs if job.startswith("train_saes:")
                for line in job.splitlines() if line.strip().startswith("threads:")}

    assert threads() == {"threads: 2"}  # parallel_jobs 1: a job takes every core
    assert threads("--config", "parallel_jobs=2") == set()  # one thread each (not printed)
    # a run-time setting: a finished study is not rerun for it
    proc = snakemake(workdir, "--cores", "2", "-n", "--config", "parallel_jobs=2")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_interrupted_output_is_rebuilt(workdir, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd, ignore=shutil.ignore_patterns(".snakemake"))
    cache = wd / "results/tiny/random/blocks.1.hook_resid_post/cache/eval"
    shutil.rmtree(cache)
    proc = snakemake(wd, "--cores", "2", "-n")
    assert "cache_activations" in proc.stdout


def test_bad_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "tests" / "config.yaml").read_text()
                   .replace("context_length: 64", "context_length: 1"))
    proc = subprocess.run([*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(bad), "-n"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "tokens.context_length: 1 is less than the minimum of 2" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def _with_config(tmp_path: Path, **changes: dict) -> Path:
    """tests/config.yaml with the sections in ``changes`` updated (one level deep).

    (``--config`` cannot do this: it passes nested values as strings.)"""
    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # params compare in key order
    return path


def test_runtime_settings_rerun_nothing(workdir, tmp_path):
    """Device, checkpoint cadence, evaluation batch and chunk sizes decide where and in what
    pieces a job computes, not what: changing them after a run leaves nothing to do."""
    changed = _with_config(
        tmp_path, device="auto", sae={"checkpoint_every": 7, "eval_batch_size": 100},
        stability={"chunk_size": 3},
        function={"masking": {"n_anchors": 3, "ce_contexts": 4, "ce_batch_size": 1,
                              "batch_size": 99},
                  "surface": {"n_anchors": 3, "top_k": 16, "browse_features": 3,
                              "browse_contexts": 4}})
    proc = snakemake(workdir, "--cores", "2", "-n", "--configfile", str(changed))
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
    # the control: a setting that changes results does rerun
    changed = _with_config(tmp_path, stability={"theta": 0.6})
    proc = snakemake(workdir, "--cores", "2", "-n", "--configfile", str(changed))
    assert "stability_census" in proc.stdout


def _copy(workdir: Path, dest: Path) -> Path:
    shutil.copytree(workdir, dest, ignore=shutil.ignore_patterns(".snakemake"))
    return dest


def test_deleted_intermediates_are_rebuilt(workdir, tmp_path):
    wd = _copy(workdir, tmp_path / "wd")
    census = wd / "results/tiny/trained/blocks.1.hook_resid_post/stability/topk"
    (census / "pairwise.json").unlink()
    (census / "sweeps.parquet").unlink()
    plan = snakemake(wd, "--cores", "2", "-n").stdout
    for rule in ("stability_census", "pool_saes", "census_figure"):
        assert rule in plan, rule
    snakemake(wd, "--cores", "2", str(census.relative_to(wd) / "pairwise.json"))
    assert (census / "pairwise.json").is_file() and (census / "sweeps.parquet").is_file()


def test_failed_job_log_holds_the_error(workdir, tmp_path):
    wd = _copy(workdir, tmp_path / "wd")
    cache = wd / "results/tiny/trained/blocks.1.hook_resid_post/cache/eval"
    shard = cache / "acts-00000.npy"
    stat = shard.stat()
    shard.write_bytes(shard.read_bytes()[:1000])
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damaged, not updated
    target = "results/tiny/trained/blocks.1.hook_resid_post/geometry/topk/summary.json"
    proc = snakemake(wd, "--cores", "1", "--forcerun", target, "--", target, check=False)
    assert proc.returncode != 0
    log = (wd / "logs/tiny/trained/blocks.1.hook_resid_post/geometry/topk.log").read_text()
    assert "Traceback (most recent call last)" in log
    rel = cache.relative_to(wd)  # jobs run in the working directory
    assert f"{rel}/acts-00000.npy: expected an activation shard listed in the header, but it " \
        "is truncated or corrupt" in log
    assert f"Delete the directory {rel} and rerun snakemake (rule cache_activations" in log
