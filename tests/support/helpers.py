"""Small helpers the test modules share: skipping (or failing) when something the test needs is
missing, deleting a namespace, polling for a condition, checking that statistics summarize
given values exactly, and importing the repository's scripts (dev.py, benchmarks, examples).

Test-only (it imports pytest); the process helpers the benchmarks use too live in
``redis_servers.py``, ``redis_cluster.py`` and ``worker_processes.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shared_rewardnorm import RunningStats
from shared_rewardnorm._core.keys import glob_escape

#: Under SHARED_REWARDNORM_REQUIRE_REDIS=1 a missing Redis (or tool) fails the test instead of
#: skipping it, so CI cannot pass by skipping everything.
REQUIRE_REDIS = os.environ.get("SHARED_REWARDNORM_REQUIRE_REDIS") == "1"


def unavailable(reason: str) -> None:
    """Skip the calling test for ``reason`` (fail it under SHARED_REWARDNORM_REQUIRE_REDIS=1)."""
    if REQUIRE_REDIS:
        pytest.fail(f"{reason} (SHARED_REWARDNORM_REQUIRE_REDIS=1, so this is a failure)")
    pytest.skip(reason)


def require_binaries(*names: str) -> None:
    """Skip the calling test when a Redis binary is missing from PATH (a failure under
    SHARED_REWARDNORM_REQUIRE_REDIS=1, as everywhere else in the suite)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not on PATH")


def drop_namespace(client: Any, namespace: str) -> None:
    """Delete every key whose name starts with ``namespace``: its statistics and batch records,
    and those of the namespaces a test derives from it (``namespace + "-copy"``). SCAN, so any
    server size is fine."""
    keys = list(client.scan_iter(match=f"{glob_escape(namespace)}*", count=1000))
    if keys:
        client.delete(*keys)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``condition()`` until it returns something truthy and return that; fail the test
    (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def assert_summarizes(stats: RunningStats, values: list[float], *, variance_rel_tol: float = 1e-10,
                      variance_abs_tol: float = 0.0) -> None:
    """``stats`` summarize exactly ``values``: count, min and max exact; mean (to 1e-12
    relative) and variance (to ``variance_rel_tol`` relative, ``variance_abs_tol`` absolute)
    against a two-pass ``math.fsum`` reference."""
    assert stats.count == len(values)
    mean = math.fsum(values) / len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    assert math.isclose(stats.mean, mean, rel_tol=1e-12), (stats.mean, mean)
    assert math.isclose(stats.variance, variance, rel_tol=variance_rel_tol, abs_tol=variance_abs_tol), (
        stats.variance, variance)
    assert (stats.min, stats.max) == (min(values), max(values))


def in_loop(loop: asyncio.AbstractEventLoop, work: Any) -> Any:
    """Run the coroutine ``work`` in ``loop`` (running in another thread) and return its result."""
    return asyncio.run_coroutine_threadsafe(work, loop).result(10)


def import_script(path: Path) -> ModuleType:
    """Import a script of the repository (``dev.py``, a benchmark, an example: none is in a
    package) from its file, as the module named after it, once per process: registered in
    ``sys.modules`` like any import, so a second call (or the script's own ``import`` of it)
    gets the same module, and what it defines pickles by name."""
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve() != path.resolve():
            raise ImportError(f"a module {name!r} from {loaded.__file__} is imported already, not {path}")
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
