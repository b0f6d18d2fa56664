"""One module per outside world: pynvml in nvml.py, hub clients in download.py, rich in render/progress."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_no_banned_import_or_lint_error():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "qwdeploy", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
