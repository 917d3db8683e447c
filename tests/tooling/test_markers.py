"""Markers select what they claim: ``-m "not real_redis"`` collects no test that reaches the
shared server (the backend parameters carry the mark, fixtures add it)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def collected(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_marker_deselects_every_test_on_the_shared_server() -> None:
    everything = collected("tests")
    on_the_server = [node for node in everything if "[redis]" in node or "[redis-" in node
                     or "real_redis" in node]
    assert len(on_the_server) > 50  # the backend parameters exist and are recognized here
    selected = set(collected("-m", "not real_redis", "tests"))
    assert not selected & set(on_the_server)
    assert "tests/behaviour/test_store.py::test_store_accepts_urls" not in selected  # asks for real_redis_url, unmarked
