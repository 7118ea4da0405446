"""The workflow on a real one-node SLURM cluster (tests/slurm/run.py), outputs against a local run.

The script's own lines are shown as it runs (not captured), so that the test log records the
cluster's jobs, their resources and the comparison with the local run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
RUN = Path(__file__).resolve().parent / "run.py"
SKIP = 77


def test_workflow_on_slurm_matches_local_run(capsys):
    proc = subprocess.Popen([sys.executable, str(RUN)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    with capsys.disabled():
        print()
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            print(line, end="", flush=True)
    rc = proc.wait(timeout=60)
    if rc == SKIP:
        reason = next((ln.split("SKIPPED: ", 1)[1] for ln in lines if "SKIPPED: " in ln), "")
        pytest.skip(f"SLURM test skipped: {reason.strip()}")
    assert rc == 0, "".join(lines[-80:])
    assert any("outputs match the local run bit for bit" in ln for ln in lines)
