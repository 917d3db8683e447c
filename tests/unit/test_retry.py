"""Retry decisions, without a server: which failures are worth another try, how long the
policy waits, and what a store decides after a failed send (``_pause_before_resending``, the
one decision the sync and asyncio shells share: wait and resend, resend at once after NOSCRIPT
or a fallback from FCALL to EVALSHA, or raise what the caller should see)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from shared_rewardnorm import FunctionsNotLoadedError, RetryPolicy, StoreUnavailableError, WrongTypeError
from shared_rewardnorm import retry as retry_module
from shared_rewardnorm._core.requests import ReadStats, RunScript
from shared_rewardnorm._core.store_ops import StoreCore
from shared_rewardnorm._redis.scripts import ClientScripts
from shared_rewardnorm.retry import worth_retrying


def certificate_refused() -> ConnectionError:
    error = ConnectionError("Error connecting to 127.0.0.1:6380.")
    error.__cause__ = ssl.SSLCertVerificationError("certificate verify failed: unable to get local issuer")
    return error


@pytest.mark.parametrize("error", [ConnectionError("refused"), TimeoutError("timed out"),
                                   BusyLoadingError("LOADING"), ClusterDownError("CLUSTERDOWN"),
                                   TryAgainError("TRYAGAIN"), ReadOnlyError("READONLY")],
                         ids=lambda error: type(error).__name__)
def test_transient_failures_are_worth_another_try(error: Exception) -> None:
    assert worth_retrying(error)


@pytest.mark.parametrize("error", [
    AuthenticationError("invalid username-password pair"),
    certificate_refused(),
    ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
    ResponseError("ERR unknown command"),
    ValueError("not a redis error"),
], ids=["wrong password", "certificate (cause)", "certificate (message)", "server error", "other"])
def test_failures_another_try_cannot_fix_are_not(error: Exception) -> None:
    assert not worth_retrying(error)


@pytest.fixture
def upper_bounds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Make the policy's random delay its upper bound, and record the ranges it drew from."""
    drawn: list[tuple[float, float]] = []

    def highest(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(retry_module.random, "uniform", highest)
    return drawn


def test_delays_double_up_to_the_cap_and_stop_after_the_attempts(upper_bounds: list[tuple[float, float]]) -> None:
    policy = RetryPolicy(attempts=5, base=0.1, cap=0.3)
    assert [policy.delay(retry) for retry in range(5)] == [0.1, 0.2, 0.3, 0.3, None]
    assert [low for low, _ in upper_bounds] == [0.0] * 4  # full jitter: from 0 up to the bound
    assert RetryPolicy(attempts=1).delay(0) is None  # one try in all: never retried


@pytest.mark.parametrize(("settings", "match"), [
    ({"attempts": 0}, "attempts must be an int >= 1, got 0"),
    ({"attempts": True}, "attempts must be an int >= 1, got True"),
    ({"attempts": 2.0}, "attempts must be an int >= 1, got 2.0"),
    ({"base": 3.0, "cap": 2.0}, r"need 0 <= base <= cap, got base=3.0 cap=2.0"),
    ({"base": -0.1}, r"need 0 <= base <= cap, got base=-0.1"),
])
def test_bad_policies_are_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**settings)


def store(retry: RetryPolicy | None, functions: bool | None = False) -> StoreCore:
    """A core with the scripts of an unconnected client (registering scripts sends nothing)."""
    core = StoreCore("ns", retry=retry)
    core._client = redis.Redis(port=1)
    core._scripts = ClientScripts(core._client, functions)
    return core


READ = ReadStats("ns:{e}")
MERGE_FREE = RunScript("configure", ("ns:{e}",), ("8",))


@pytest.mark.parametrize("error", [ConnectionError("refused"), ClusterDownError("CLUSTERDOWN The cluster is down")],
                         ids=["connection", "CLUSTERDOWN"])
def test_a_transient_failure_is_sent_again_after_the_policys_delay_until_the_tries_run_out(
        upper_bounds: list[tuple[float, float]], error: Exception) -> None:
    core = store(RetryPolicy(attempts=3, base=0.1, cap=1.0))
    assert core._pause_before_resending(READ, error, 0, 0.0) == 0.1
    assert core._pause_before_resending(READ, error, 1, 0.1) == 0.2
    with pytest.raises(StoreUnavailableError, match=r"the store at localhost:1 is unavailable: .* \(after 3 tries in "
                                                   r"0\.30 s; the request's fate is unknown\)") as raised:
        core._pause_before_resending(READ, error, 2, 0.3)  # the third try was the last
    assert raised.value.__cause__ is error and core.retries == 2


def test_without_a_policy_a_transient_failure_is_unavailable_at_once() -> None:
    core = store(None)
    error = ConnectionError("refused")
    with pytest.raises(StoreUnavailableError, match=r"after 1 try in 0\.00 s") as raised:
        core._pause_before_resending(READ, error, 0, 0.0)
    assert raised.value.__cause__ is error and core.retries == 0


def test_a_failure_no_retry_can_fix_is_raised_as_it_came() -> None:
    core = store(RetryPolicy())
    error = AuthenticationError("invalid password")
    with pytest.raises(AuthenticationError) as raised:
        core._pause_before_resending(READ, error, 0, 0.0)
    assert raised.value is error and core.retries == 0


def test_a_server_error_is_translated_by_its_request_and_not_retried() -> None:
    core = store(RetryPolicy())
    with pytest.raises(WrongTypeError, match=r"ns:\{e\}: holds a non-hash value"):
        core._pause_before_resending(READ, ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                                         "kind of value"), 0, 0.0)
    assert core.retries == 0


def test_noscript_is_sent_again_at_once() -> None:
    core = store(RetryPolicy(), functions=False)
    noscript = NoScriptError("No matching script. Please use EVAL.")
    assert core._pause_before_resending(MERGE_FREE, noscript, 0, 0.0) == 0.0
    assert core.retries == 0  # not a retry of a failure: the script's text goes with the next call


def test_auto_mode_falls_back_to_evalsha_for_good_when_the_server_has_no_function() -> None:
    core = store(RetryPolicy(), functions=None)
    assert core._scripts.using_functions
    assert core._pause_before_resending(MERGE_FREE, ResponseError("Function not found"), 0, 0.0) == 0.0
    assert not core._scripts.using_functions


def test_functions_only_mode_says_how_to_load_the_missing_library() -> None:
    core = store(RetryPolicy(), functions=True)
    with pytest.raises(FunctionsNotLoadedError, match=r"load it once with StatsStore\(\.\.\.\)\.load_functions\(\)"):
        core._pause_before_resending(MERGE_FREE, ResponseError("Function not found"), 0, 0.0)
    assert core._scripts.using_functions
