"""Running the command line in tests: in process (``main``, output captured) or as the installed
console script, as a user would; and the checks its output must pass (one error line, the
demo's verdicts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared_rewardnorm.cli import main

PROG = "shared-rewardnorm"


def cli_command() -> list[str]:
    """The installed console script, or the module if the script is not installed."""
    script = Path(sys.executable).with_name(PROG)
    if script.exists():
        return [str(script)]
    found = shutil.which(PROG)
    return [found] if found else [sys.executable, "-m", "shared_rewardnorm.cli"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: its exit code, and what it printed on stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    """``err`` is one ``shared-rewardnorm: error: ...`` line (no traceback) naming ``fragments``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


#: The demo's verdicts, in the order it prints them.
CHECKS = ("replicas agree", "counts", "means")


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script with ``argv`` (and ``env`` added to this environment), output captured."""
    return subprocess.run([*cli_command(), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assert_all_checks_pass(result: subprocess.CompletedProcess[str]) -> None:
    """The demo ran to its end and printed every verdict as PASS."""
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0] for line in verdicts] == [f"PASS  {name}" for name in CHECKS], result.stdout
    assert "Traceback" not in result.stderr


#: Demo options for a quick run: the point is the processes and the checks, not the volume.
SMALL_DEMO = ["--batches", "2", "--batch-size", "8"]
