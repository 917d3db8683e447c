"""The wheel ships the Lua scripts, and a process that has only the wheel finds and runs them.

The test suite itself usually imports the package from the checkout (an editable install, or
``python -m pytest`` from the repo root), where ``scripts.py`` falls back to the top-level
``lua/`` directory; that fallback would hide a wheel without its scripts. So the wheel is built
offline with the installed backend, unpacked, and imported by a fresh interpreter started
outside the repo with the unpacked wheel first on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm._redis import scripts
from tests.support import REPO

pytestmark = pytest.mark.slow

LUA_DIR = REPO / "lua"
REQUIRED_LUA = ("merge.lua", "replace.lua", "stats_lib.lua")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the checkout, built without network or build isolation."""
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out)],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("shared_rewardnorm-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}: {sorted(p.name for p in out.iterdir())}"
    return wheels[0]


def repo_lua_files() -> dict[str, bytes]:
    """Every file under the checkout's lua/, by its path relative to lua/."""
    return {path.relative_to(LUA_DIR).as_posix(): path.read_bytes()
            for path in sorted(LUA_DIR.rglob("*")) if path.is_file()}


def test_wheel_contains_every_lua_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in REQUIRED_LUA:
            assert f"shared_rewardnorm/lua/{name}" in names
        for relative, content in repo_lua_files().items():
            member = f"shared_rewardnorm/lua/{relative}"
            assert member in names, f"{member} is missing from {wheel.name}"
            assert archive.read(member) == content, f"{member} differs from lua/{relative}"
        # Every module of every subpackage, and the typing marker.
        shipped = {path.relative_to(REPO).as_posix() for path in (REPO / "shared_rewardnorm").rglob("*.py")}
        assert shipped | {"shared_rewardnorm/py.typed"} <= names, sorted(shipped - names)
        # The scripts ship inside the package only, never as a top-level lua/ package.
        assert not any(name.startswith("lua/") for name in names)


# Runs in a fresh interpreter with only the unpacked wheel (and the venv's dependencies).
PROBE = r"""
import json, sys
from importlib import resources
from pathlib import Path

import shared_rewardnorm
from shared_rewardnorm import SharedRewardNormalizer
from shared_rewardnorm._redis import scripts

batch = [float(value) for value in range(20)]
norm = SharedRewardNormalizer("x")  # redis=None: the embedded store, fakeredis running the Lua
normalized = norm.normalize(batch)
print(json.dumps({
    "package_file": shared_rewardnorm.__file__,
    "scripts_file": scripts.__file__,
    "checkout_fallback": str(Path(scripts.__file__).resolve().parents[2] / "lua"),
    "packaged_merge_is_file": resources.files("shared_rewardnorm").joinpath("lua", "merge.lua").is_file(),
    "sources": {operation: scripts.script_source(operation) for operation in scripts.OPERATIONS},
    "batch": batch,
    "normalized": [float(value) for value in normalized],
    "count": norm.count,
    "mean": norm.mean,
    "std": norm.std,
}))
"""


def run_probe(site: Path, cwd: Path) -> dict[str, Any]:
    """Run PROBE with ``site`` first on the path; return what it printed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"probe failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unpacked_wheel_finds_and_runs_its_scripts(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    assert REPO not in elsewhere.resolve().parents

    report = run_probe(site, elsewhere)

    # Imported from the wheel, not from the checkout that the editable install's .pth (or
    # pytest's cwd) would put on the path.
    site = site.resolve()
    for key in ("package_file", "scripts_file"):
        assert site in Path(report[key]).resolve().parents, f"{key} = {report[key]} is not in {site}"
    # ...and the scripts came from inside the package: the checkout fallback does not exist there.
    assert not Path(report["checkout_fallback"]).exists()
    assert report["packaged_merge_is_file"]

    library = (LUA_DIR / "stats_lib.lua").read_text(encoding="utf-8")
    assert report["sources"]["merge"] == library + "\n" + (LUA_DIR / "merge.lua").read_text(encoding="utf-8")
    assert set(report["sources"]) == set(scripts.OPERATIONS)
    for operation in scripts.OPERATIONS:
        assert report["sources"][operation] == scripts.script_source(operation), operation

    # The merge script ran (the embedded store is fakeredis with Lua) and its statistics, which
    # include the batch, normalized the batch.
    batch = report["batch"]
    assert report["count"] == len(batch)
    assert report["mean"] == pytest.approx(sum(batch) / len(batch))
    assert report["std"] > 0
    expected = [(value - report["mean"]) / (report["std"] + 1e-8) for value in batch]
    assert report["normalized"] == pytest.approx(expected)
    assert report["normalized"] != batch
