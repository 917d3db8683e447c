"""The command line without a server: usage errors (exit 2, before anything connects), URLs
refused by the rule the library uses, the printed Lua, and the rendering of tables and JSON
from plain values (``cli/render.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared_rewardnorm.cli import main
from shared_rewardnorm.cli.render import redact
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
