"""The check at the end of a session (``pytest_sessionfinish`` in conftest.py) fails a run that
leaves a key of its namespaces on the shared server, and deletes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from tests.support import REPO

LEAKY_TEST = """
import redis
import pytest
from tests.conftest import SESSION_PREFIX


@pytest.mark.real_redis
def test_leaves_a_key(real_redis_url):
    client = redis.Redis.from_url(real_redis_url)
    client.set(f"{SESSION_PREFIX}-left:{{env}}:batches:1", "1")
    client.set("KEY_FILE", SESSION_PREFIX)  # tells the outer test which key to look for
    client.close()
"""


@pytest.mark.real_redis
def test_a_key_left_behind_fails_the_run(real_client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    marker = f"{namespace}-prefix"  # under the outer run's prefix: its own check deletes it if this fails
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(textwrap.dedent(LEAKY_TEST).replace("KEY_FILE", marker))
    # tests/conftest.py as a plugin (the file lives outside tests/), with the project's settings.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                             "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(test_file)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    prefix = real_client.get(marker)
    assert prefix is not None, result.stdout + result.stderr  # the inner test ran on this server
    assert "1 passed" in result.stdout, result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "the tests left 1 keys on" in result.stderr, result.stderr
    assert f"{prefix.decode()}-left:{{env}}:batches:1" in result.stderr
    assert list(real_client.scan_iter(match=f"{prefix.decode()}-*")) == []  # and deleted it
