"""The workflow on a real one-node SLURM cluster (tests/slurm/run.py), outputs against a local run.

The script's lines are shown at the end of the test session, also when it passes, so that the test
log records the cluster's jobs, their resources and the comparison with the local run (to see them
as it runs: ``python tests/slurm/run.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPORT_SECTION

pytestmark = pytest.mark.slurm
RUN = Path(__file__).resolve().parent / "run.py"
SKIP = 77


def test_workflow_on_slurm_matches_local_run(request):
    proc = subprocess.Popen([sys.executable, str(RUN)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = list(proc.stdout)
    rc = proc.wait(timeout=60)
    # shown at the end of the session by tests/conftest.py's pytest_terminal_summary
    request.node.add_report_section("call", REPORT_SECTION, "".join(lines))
    if rc == SKIP:
        reason = next((ln.split("SKIPPED: ", 1)[1] for ln in lines if "SKIPPED: " in ln), "")
        pytest.skip(f"SLURM test skipped: {reason.strip()}")
    assert rc == 0, "".join(lines[-80:])
    assert any("outputs match the local run bit for bit" in ln for ln in lines)
