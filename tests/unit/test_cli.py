"""The command line without a server: usage errors (exit 2, before anything connects), URLs
refused by the rule the library uses, the printed Lua, and the rendering of tables and JSON
from plain values (``cli/render.py``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from shared_rewardnorm import DecayedStats, EnvInfo, RunningStats
from shared_rewardnorm.cli import main
from shared_rewardnorm.cli.render import format_age, format_table, redact, stats_json, stats_table
from tests.support.cli import assert_one_error_line, run


@pytest.mark.parametrize("value", ["", " "])
def test_a_blank_url_variable_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         value: str) -> None:
    monkeypatch.setenv("SHARED_REWARDNORM_URL", value)
    code, _, err = run(capsys, "reset", "gsm8k", "--yes")
    assert code == 2
    assert_one_error_line(err, "$SHARED_REWARDNORM_URL is set but blank")


def test_a_malformed_url_variable_is_refused_by_the_same_rule(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHARED_REWARDNORM_URL", "localhost:6379")
    code, _, err = run(capsys, "reset", "gsm8k", "--yes")
    assert code == 2
    assert_one_error_line(err, "$SHARED_REWARDNORM_URL must start with redis://")


@pytest.mark.parametrize("argv, message", [
    ([], "required"),
    (["watch", "--interval", "0"], "must be > 0"),
    (["demo", "--workers", "2"], "must be >= 3"),
    (["bogus"], "invalid choice"),
])
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def test_python_dash_m() -> None:
    result = subprocess.run([sys.executable, "-m", "shared_rewardnorm", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "snapshot" in result.stdout


def test_lua_prints_what_clients_run(capsys: pytest.CaptureFixture[str]) -> None:
    from shared_rewardnorm._redis.scripts import function_library, script_source

    for what, expected in (("merge", script_source("merge")), ("replace", script_source("replace")),
                           ("library", function_library())):
        assert main(["lua", what]) == 0
        assert capsys.readouterr().out == expected


@pytest.mark.parametrize("argv, message", [
    (("configure", "gsm8k"), "one of the arguments --half-life --no-decay is required"),
    (("configure", "gsm8k", "--half-life", "0"), "must be > 0"),
    (("configure", "gsm8k", "--half-life", "-1"), "must be > 0"),
    (("configure", "gsm8k", "--half-life", "nan"), "must be a finite number, got nan"),
    (("configure", "gsm8k", "--half-life", "inf"), "must be a finite number, got inf"),
    (("watch", "--interval", "nan"), "must be a finite number, got nan"),
    (("configure", "gsm8k", "--half-life", "10", "--no-decay"), "not allowed with argument"),
    (("freeze",), "the following arguments are required: ENV"),
])
def test_configure_and_freeze_usage_errors(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                           message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


# --- rendering (cli/render.py): plain values in, text out ---------------------------------------


#: Two envs as ``stats`` reads them: one plain, merged two hours before ``NOW``; one with a
#: half-life, frozen, merged 42 s before.
NOW = 1_700_000_042.0
FOUND = {"b": EnvInfo(RunningStats(4, 3.0, 14.0, 1.0, 6.0), DecayedStats(3.5, 3.25, 9.5), 8.0, True, 2,
                      1_700_000_000_000, 1_700_000_042_000_000 - 3 * 86_400_000_000, "merge"),
         "a": EnvInfo(RunningStats(1, 5.0, 0.0, 5.0, 5.0), merges=1, updated_at=1_700_000_042_000 - 7_200_000)}


def test_the_stats_table_shows_totals_recent_statistics_flag_ages_and_identity() -> None:
    """std sqrt(14/4), recent std sqrt(9.5/3.5), and the aggregate of both (count 5, mean 3.4,
    m2 14 + 0 + 2**2 * 4 * 1 / 5 = 17.2, std sqrt(17.2/5)) at six significant digits; the age of
    the last merge and of the statistics' identity (with how they were created)."""
    assert stats_table(FOUND, now=NOW).splitlines() == [
        "env        count  mean      std  min  max  recent mean  recent std  frozen  age     created",
        "a              1     5        0    5    5            -           -      no   2h           -",
        "b              4     3  1.87083    1    6         3.25     1.64751     yes  42s  3d (merge)",
        "-------------------------------------------------------------------------------------------",
        "aggregate      5   3.4  1.85472    1    6",
    ]


def test_stats_json_holds_every_field_exactly() -> None:
    shown = stats_json("ns", FOUND)
    assert json.loads(json.dumps(shown, allow_nan=False)) == shown  # strict JSON, every float round-trips
    assert list(shown["envs"]) == ["a", "b"]
    assert shown["envs"]["a"]["epoch"] is None and shown["envs"]["b"]["origin"] == "merge"
    assert shown["envs"]["b"] == {**FOUND["b"].to_dict(), "epoch": FOUND["b"].epoch, "origin": "merge",
                                  "std": math.sqrt(14 / 4),
                                  "decayed": {"weight": 3.5, "mean": 3.25, "m2": 9.5, "std": math.sqrt(9.5 / 3.5)}}
    aggregate = shown["aggregate"]
    assert (aggregate["count"], aggregate["min"], aggregate["max"]) == (5, 1.0, 6.0)
    assert aggregate["mean"] == pytest.approx(3.4, rel=1e-15) and aggregate["m2"] == pytest.approx(17.2, rel=1e-15)


@pytest.mark.parametrize(("seconds", "shown"), [(None, "-"), (-3.0, "0s"), (0.0, "0s"), (59.4, "59s"), (60.0, "1m"),
                                                (3599.0, "59m"), (3600.0, "1h"), (2 * 86400 + 5, "2d")])
def test_ages_are_short(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


def test_tables_align_names_left_and_numbers_right_with_a_footer_under_a_rule() -> None:
    assert format_table(["name", "n"], [["x", "1"], ["long", "100"]], ["total", "101"]).splitlines() == [
        "name     n", "x        1", "long   100", "----------", "total  101"]
