"""benchmarks/server_cost.py keeps working as the Lua changes: every script it builds from the
current lua/ files (the parts of the merge, the primitives, a baseline revision, candidates)
loads and runs on a private server. Its predecessor named helpers that a rework renamed and
silently printed n/a; here a renamed helper fails the test. Nothing is timed or compared with a
threshold: only that each table is printed with a positive figure."""

from __future__ import annotations

import re

import pytest

from tests.support import REPO
from tests.support.helpers import import_script, require_binaries

server_cost = import_script(REPO / "benchmarks" / "server_cost.py")


def _row(output: str, label: str) -> list[str]:
    """The cells of the markdown table row that starts with ``label``."""
    for line in output.splitlines():
        if line.startswith(f"| {label} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} in:\n{output}")


@pytest.mark.own_server
def test_every_script_runs_and_each_table_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    require_binaries("redis-server")
    lua = REPO / "lua"
    candidate = f"{lua / 'stats_lib.lua'}+{lua / 'merge.lua'}"
    assert server_cost.main(["--markdown", "--calls", "20", "--rounds", "1", "--parts", "--primitives",
                             "--capacity", "--baseline", "HEAD", "--half-life", "100",
                             "--script", f"as-script={candidate}", "--function", f"as-function={candidate}"]) == 0
    output = capsys.readouterr().out
    for label in ("merge + record", "HEAD merge + record", "candidate as-script", "candidate as-function",
                  "merge (FCALL)"):
        assert float(_row(output, label)[3]) > 0  # x no-op
    for label in ("parse + validate the argument", "read the hash: HMGET, validate, parse", "merge + record (total)"):
        assert _row(output, label)[1]
    assert float(_row(output, "redis.call HMGET of the 14 fields")[1]) > 0
    assert float(_row(output, "merge + record")[1].replace(",", "")) > 0
    assert re.search(r"merge / HEAD merge, median of per-round ratios: \d+\.\d\d", output)
    assert "requests/s one core sustains" in output


@pytest.mark.parametrize(("option", "spec", "expected"), [
    ("--script", "no-equals-sign", "--script NAME=FILE"),
    ("--function", "f=only-one-file.lua", "--function NAME=TOPFILE"),
])
def test_a_malformed_candidate_is_refused(option: str, spec: str, expected: str) -> None:
    with pytest.raises(SystemExit, match=f"{re.escape(expected)}.*expected, got '{re.escape(spec)}'"):
        server_cost.parse_candidates([spec] if option == "--script" else [],
                                     [spec] if option == "--function" else [])


def test_parts_refuse_a_merge_they_cannot_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_cost, "script_source", lambda name: "return 1")
    with pytest.raises(RuntimeError, match=r"merge\.lua no longer contains .*HSET.*update --parts"):
        server_cost.part_sources()


@pytest.mark.own_server
def test_a_candidate_may_not_take_a_name_in_use() -> None:
    require_binaries("redis-server")
    with pytest.raises(SystemExit, match="candidate name 'merge' is taken"):
        server_cost.main(["--calls", "1", "--rounds", "1", "--script", f"merge={REPO / 'lua' / 'merge.lua'}"])
