"""Shared fixtures: a tiny native transformer-lens model and a small synthetic text corpus."""

from __future__ import annotations

import os

# before torch is imported anywhere: idle OpenMP threads sleep rather than spin (the workflow
# tests run snakemake jobs beside the test process on two cores)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

TINY_NATIVE = {
    "source": "native",
    "hooks": ["blocks.1.hook_resid_post"],
    "seed": 0,
    "config": {"n_layers": 2, "d_model": 32, "n_ctx": 64, "d_head": 8, "n_heads": 4,
               "d_mlp": 64, "act_fn": "gelu", "normalization_type": "LN"},
}

_WORDS = {
    "det": ["the", "a", "every", "one", "that"],
    "adj": ["small", "red", "quiet", "old", "bright", "curious", "heavy", "distant"],
    "noun": ["river", "engine", "garden", "teacher", "window", "market", "signal", "forest",
             "letter", "bridge", "council", "harbour"],
    "verb": ["crosses", "follows", "builds", "watches", "repairs", "describes", "moves", "holds"],
    "adv": ["slowly", "often", "twice", "quietly", "again", "early"],
}


def synthetic_documents(n_docs: int = 24, sentences: int = 30, seed: int = 0) -> list[str]:
    """Deterministic English-like documents (a toy grammar), with digits and punctuation."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        out = []
        for _ in range(sentences):
            w = {k: v[rng.integers(len(v))] for k, v in _WORDS.items()}
            sent = (f"{w['det']} {w['adj']} {w['noun']} {w['verb']} {w['det']} {w['noun']} "
                    f"{w['adv']}")
            if rng.random() < 0.3:
                sent += f", in {1800 + int(rng.integers(200))}"
            out.append(sent.capitalize() + ("." if rng.random() < 0.8 else "!"))
        docs.append(f"Document {d}. " + " ".join(out))
    return docs


@pytest.fixture(scope="session")
def tiny_model():
    from saestab import models

    return models.load_model(TINY_NATIVE, "trained", name="tiny")


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i, text in enumerate(synthetic_documents()):
        (d / f"doc{i:03d}.txt").write_text(text)
    return d


# `make test` runs two pytest workers (pytest-xdist), one test file at a time each, files in
# collection order (--no-loadscope-reorder). The two long files go first, one to each worker:
# the workflow's end-to-end run and the SLURM cluster's (about 5 and 3 minutes alone); the unit
# tests fill in beside them.
LONGEST_FIRST = ("tests/test_workflow.py", "tests/slurm/test_slurm.py")
REPORT_SECTION = "slurm-test"  # see tests/slurm/test_slurm.py


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: file order otherwise kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The SLURM test's own log (the cluster's jobs, their resources, the comparison), shown at
    the end also when it passed: a worker's output reaches the terminal only this way."""
    for report in terminalreporter.stats.get("passed", []):
        for name, text in report.sections:
            if REPORT_SECTION in name:
                terminalreporter.write_sep("-", f"{report.nodeid}: its log")
                terminalreporter.write(text)
