"""``StoreCore``'s read, listing, survey, replace and restore operations driven by hand
(``tests.support.drive``): the requests each one yields, and what it makes of canned replies,
with no server. The same operations run over every backend in ``tests/behaviour``; here each
step is visible: which keys are read in one round trip, what a replace sends, what is refused
before anything is sent."""

from __future__ import annotations

import math
from typing import Any

import pytest
from redis.exceptions import ResponseError

from shared_rewardnorm import CorruptStatsError, DecayedStats, EnvInfo, RunningStats, WrongTypeError
from shared_rewardnorm._core.protocol import encode_state, encode_stats
from shared_rewardnorm._core.requests import LoadFunctions, ReadMany, ReadStats, RunScript, ScanKeys
from shared_rewardnorm._core.store_ops import StoreCore
from tests.support.drive import Driver, drive

#: A hash as HGETALL returns it from a client that does not decode: totals of [1, 2, 3, 6], a
#: half-life of 8 with its decayed statistics, frozen, 2 merges, the last at 1700000000000 ms.
CONFIGURED = {b"count": b"4", b"mean": b"3", b"m2": b"14", b"min": b"1", b"max": b"6", b"std": b"1.8708286933869707",
              b"weight": b"3.5", b"wmean": b"3.25", b"wm2": b"9.5", b"half_life": b"8", b"frozen": b"1",
              b"merges": b"2", b"updated_at": b"1700000000000"}
CONFIGURED_INFO = EnvInfo(RunningStats(4, 3.0, 14.0, 1.0, 6.0), DecayedStats(3.5, 3.25, 9.5), 8.0, True, 2,
                          1700000000000)


def plain(count: int, mean: float, m2: float, low: float, high: float, merges: int = 1) -> dict[bytes, bytes]:
    """A hash with totals only, written as the scripts write numbers (%.17g)."""
    return {b"count": b"%d" % count, b"mean": b"%.17g" % mean, b"m2": b"%.17g" % m2, b"min": b"%.17g" % low,
            b"max": b"%.17g" % high, b"merges": b"%d" % merges, b"updated_at": b"1700000000000"}


@pytest.fixture
def core() -> StoreCore:
    return StoreCore("ns")


# --- one env ---------------------------------------------------------------------------------


def test_info_is_one_read_of_the_envs_hash(core: StoreCore) -> None:
    requests, info = drive(core._info_op("gsm8k"), [CONFIGURED])
    assert requests == [ReadStats("ns:{gsm8k}")]
    assert info == CONFIGURED_INFO


def test_a_decoding_client_gives_the_same_info(core: StoreCore) -> None:
    decoded = {field.decode(): value.decode() for field, value in CONFIGURED.items()}
    assert drive(core._info_op("gsm8k"), [decoded])[1] == CONFIGURED_INFO


def test_an_absent_env_is_empty(core: StoreCore) -> None:
    requests, stats = drive(core._get_op("new"), [{}])
    assert requests == [ReadStats("ns:{new}")] and stats == RunningStats()


def test_a_corrupt_hash_names_its_key_and_field(core: StoreCore) -> None:
    with pytest.raises(CorruptStatsError, match=r"corrupt stats hash ns:\{gsm8k\}: mean is 'x'") as caught:
        drive(core._get_op("gsm8k"), [{**CONFIGURED, b"mean": b"x"}])
    assert (caught.value.key, caught.value.field) == ("ns:{gsm8k}", "mean")


def test_a_bad_env_name_is_refused_before_any_request(core: StoreCore) -> None:
    driver = Driver([])
    with pytest.raises(ValueError, match="braces"):
        driver.run(core._info_op("a{b}"))
    assert driver.requests == []


# --- several envs in one round trip ------------------------------------------------------------


def test_get_many_reads_every_named_env_once_in_one_request(core: StoreCore) -> None:
    requests, found = drive(core._get_many_op(["b", "a", "b"]), [[plain(2, 1.5, 0.5, 1.0, 2.0), {}]])
    assert requests == [ReadMany(("ns:{b}", "ns:{a}"))]  # in the caller's order, a repeated name once
    assert found == {"b": RunningStats(2, 1.5, 0.5, 1.0, 2.0), "a": RunningStats()}


def test_get_many_of_no_envs_sends_nothing(core: StoreCore) -> None:
    assert drive(core._get_many_op([]), []) == ([], {})


def test_get_many_of_a_single_str_is_refused_before_any_request(core: StoreCore) -> None:
    driver = Driver([])
    with pytest.raises(TypeError, match="not a single str"):
        driver.run(core._get_many_op("gsm8k"))
    assert driver.requests == []


def test_a_key_of_another_type_among_many_is_a_wrong_type_error(core: StoreCore) -> None:
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    with pytest.raises(WrongTypeError, match=r"ns:\{b\}: holds a non-hash value") as caught:
        drive(core._get_many_op(["a", "b"]), [[plain(1, 1.0, 0.0, 1.0, 1.0), wrongtype]])
    assert caught.value.key == "ns:{b}"


# --- listing: SCAN, then one read ---------------------------------------------------------------


#: What SCAN MATCH ns:{*} finds: two envs, a batch record, and a key the pattern lets through
#: that is no env's (``ns:{x}y`` does not end with the tag).
SCANNED = [b"ns:{b}", b"ns:{a}", b"ns:{a}:batches:0123456789abcdef", b"ns:{x}y"]


RESET_ONLY = {b"epoch": b"1700000000000000", b"origin": b"replace"}


def test_envs_lists_the_stats_keys_the_scan_found_that_hold_more_than_an_identity(core: StoreCore) -> None:
    """The scan's stats keys are read: an env reset (its hash holds only its identity) is not listed."""
    requests, envs = drive(core._envs_op(), [SCANNED, [RESET_ONLY, plain(1, 1.0, 0.0, 1.0, 1.0)]])
    assert requests == [ScanKeys("ns:{*}"), ReadMany(("ns:{a}", "ns:{b}"))]
    assert envs == ["b"]


def test_envs_escapes_glob_characters_of_the_namespace() -> None:
    requests, envs = drive(StoreCore("run[1]*")._envs_op(),
                           [["run[1]*:{e}"], [plain(1, 1.0, 0.0, 1.0, 1.0)]])  # a decoding client: str keys
    assert requests[0] == ScanKeys("run\\[1\\]\\*:{*}") and envs == ["e"]


def test_all_reads_the_listed_envs_in_one_request_and_skips_the_vanished(core: StoreCore) -> None:
    """An env deleted between the SCAN and the read (an empty hash) is left out; a configured
    env without statistics is in ``infos`` but not in ``all``."""
    configured_only = {b"half_life": b"8", b"weight": b"0", b"wmean": b"0", b"wm2": b"0"}
    replies = [SCANNED, [plain(2, 1.5, 0.5, 1.0, 2.0), {}]]
    requests, found = drive(core._all_op(), replies)
    assert requests == [ScanKeys("ns:{*}"), ReadMany(("ns:{a}", "ns:{b}"))]
    assert found == {"a": RunningStats(2, 1.5, 0.5, 1.0, 2.0)}
    _, infos = drive(core._selected_infos_op(None), [SCANNED, [plain(2, 1.5, 0.5, 1.0, 2.0), configured_only]])
    assert set(infos) == {"a", "b"} and infos["b"].half_life == 8.0 and infos["b"].stats.is_empty
    _, found = drive(core._all_op(), [SCANNED, [plain(2, 1.5, 0.5, 1.0, 2.0), configured_only]])
    assert set(found) == {"a"}


def test_an_empty_namespace_reads_nothing_after_the_scan(core: StoreCore) -> None:
    requests, found = drive(core._all_op(), [[]])
    assert requests == [ScanKeys("ns:{*}")] and found == {}


def test_aggregate_merges_what_it_read(core: StoreCore) -> None:
    a, b = RunningStats.from_values([1.0, 2.0]), RunningStats.from_values([10.0])
    requests, total = drive(core._aggregate_op(["a", "b"]), [[plain(*a.to_dict().values()),
                                                              plain(*b.to_dict().values())]])
    assert requests == [ReadMany(("ns:{a}", "ns:{b}"))]
    assert total == RunningStats.from_values([1.0, 2.0, 10.0])


def test_metrics_name_each_env_and_add_the_recent_statistics_where_there_is_a_half_life(core: StoreCore) -> None:
    _, metrics = drive(core._metrics_op(["c", "p"]), [[CONFIGURED, plain(1, 5.0, 0.0, 5.0, 5.0)]])
    assert metrics == {
        "reward_norm/c/count": 4.0, "reward_norm/c/mean": 3.0, "reward_norm/c/std": math.sqrt(14 / 4),
        "reward_norm/c/min": 1.0, "reward_norm/c/max": 6.0,
        "reward_norm/c/recent_mean": 3.25, "reward_norm/c/recent_std": math.sqrt(9.5 / 3.5),
        "reward_norm/p/count": 1.0, "reward_norm/p/mean": 5.0, "reward_norm/p/std": 0.0,
        "reward_norm/p/min": 5.0, "reward_norm/p/max": 5.0,
    }
    # Of the whole namespace: the envs with statistics (a configured one without any has none to report).
    configured_only = {b"half_life": b"8", b"weight": b"0", b"wmean": b"0", b"wm2": b"0"}
    requests, metrics = drive(core._metrics_op(None), [SCANNED, [plain(1, 5.0, 0.0, 5.0, 5.0), configured_only]])
    assert requests == [ScanKeys("ns:{*}"), ReadMany(("ns:{a}", "ns:{b}"))]
    assert set(metrics) == {f"reward_norm/a/{stat}" for stat in ("count", "mean", "std", "min", "max")}


# --- survey: one broken env hides no healthy one --------------------------------------------------


def test_survey_sorts_the_healthy_from_the_broken(core: StoreCore) -> None:
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    replies = [[plain(1, 1.0, 0.0, 1.0, 1.0), {**CONFIGURED, b"m2": b"-1"}, wrongtype, {}]]
    requests, (found, broken) = drive(core._survey_op(["ok", "corrupt", "taken", "absent"]), replies)
    assert requests == [ReadMany(("ns:{ok}", "ns:{corrupt}", "ns:{taken}", "ns:{absent}"))]
    assert found == {"ok": EnvInfo(RunningStats(1, 1.0, 0.0, 1.0, 1.0), merges=1, updated_at=1700000000000),
                     "absent": EnvInfo()}  # named: reported, empty
    assert set(broken) == {"corrupt", "taken"}
    assert isinstance(broken["corrupt"], CorruptStatsError) and broken["corrupt"].field == "m2"
    assert isinstance(broken["taken"], WrongTypeError) and broken["taken"].key == "ns:{taken}"


def test_survey_of_the_namespace_scans_first_and_drops_the_vanished(core: StoreCore) -> None:
    requests, (found, broken) = drive(core._survey_op(None), [SCANNED, [{}, CONFIGURED]])
    # Keys of any type: survey names a key of another type under an env's name.
    assert requests == [ScanKeys("ns:{*}", hashes_only=False), ReadMany(("ns:{a}", "ns:{b}"))]
    assert (found, broken) == ({"b": CONFIGURED_INFO}, {})


def test_survey_of_an_empty_namespace_sends_only_the_scan(core: StoreCore) -> None:
    assert drive(core._survey_op(None), [[]]) == ([ScanKeys("ns:{*}", hashes_only=False)], ({}, {}))


# --- replace: set, reset, restore ---------------------------------------------------------------


#: What replace.lua answers: the env in ENV_FIELDS order (totals, decayed, half_life, frozen,
#: merges, updated_at, and the new identity: epoch and origin).
REPLACED = b"2 1.5 0.5 1 2 0 0 0 0 0 0 0 1700000000000001 replace"
#: ...and for the configured env: CONFIGURED's fields in that order.
CONFIGURED_REPLY = b"4 3 14 1 6 3.5 3.25 9.5 8 1 2 1700000000000 1700000000000002 replace"


def test_set_sends_the_totals_and_returns_what_the_script_stored(core: StoreCore) -> None:
    stats = RunningStats(2, 1.5, 0.5, 1.0, 2.0)
    requests, stored = drive(core._set_op("e", stats), [REPLACED])
    assert requests == [RunScript("replace", ("ns:{e}",), (encode_stats(stats),))]
    assert stored == stats


def test_set_refuses_what_is_not_running_stats_before_any_request(core: StoreCore) -> None:
    driver = Driver([])
    with pytest.raises(TypeError, match="stats must be RunningStats, got dict"):
        driver.run(core._set_op("e", {"count": 1}))  # type: ignore[arg-type]
    assert driver.requests == []


def test_reset_replaces_with_empty_totals(core: StoreCore) -> None:
    requests, stats = drive(core._reset_op("e"), [b"0 0 0 0 0 0 0 0 8 1 0 0 1700000000000003 replace"])
    assert requests == [RunScript("replace", ("ns:{e}",), (encode_stats(RunningStats()),))]
    assert stats == RunningStats()


def snapshot(version: int, envs: dict[str, Any]) -> dict[str, Any]:
    return {"format": "shared_rewardnorm.snapshot", "version": version, "namespace": "elsewhere", "envs": envs}


def test_restore_checks_the_target_keys_then_replaces_each_env_with_its_state(core: StoreCore) -> None:
    """Version 2: one read of every target key (a key of another type would be refused before
    the first write), then per env a replace carrying totals and state."""
    entries = {"c": CONFIGURED_INFO.to_dict(), "p": EnvInfo(RunningStats(2, 1.5, 0.5, 1.0, 2.0)).to_dict()}
    replies = [[CONFIGURED, {}], CONFIGURED_REPLY, REPLACED]
    requests, restored = drive(core._restore_op(snapshot(2, entries)), replies)
    assert requests == [
        ReadMany(("ns:{c}", "ns:{p}")),
        RunScript("replace", ("ns:{c}",), (encode_stats(CONFIGURED_INFO.stats), encode_state(CONFIGURED_INFO))),
        RunScript("replace", ("ns:{p}",), (encode_stats(RunningStats(2, 1.5, 0.5, 1.0, 2.0)),
                                           encode_state(EnvInfo()))),
    ]
    assert restored == {"c": CONFIGURED_INFO.stats, "p": RunningStats(2, 1.5, 0.5, 1.0, 2.0)}


def test_a_version_1_restore_replaces_the_totals_only(core: StoreCore) -> None:
    totals = RunningStats(2, 1.5, 0.5, 1.0, 2.0)
    requests, restored = drive(core._restore_op(snapshot(1, {"p": totals.to_dict()})), [[{}], REPLACED])
    assert requests == [ReadMany(("ns:{p}",)), RunScript("replace", ("ns:{p}",), (encode_stats(totals),))]
    assert restored == {"p": totals}


@pytest.mark.parametrize(("bad", "error", "match"), [
    ({"format": "other"}, ValueError, "not a shared_rewardnorm snapshot"),
    ({"version": 3}, ValueError, "unsupported snapshot version 3"),
    ({"envs": {"ok": RunningStats().to_dict(), "a{b}": RunningStats().to_dict()}}, ValueError, "braces"),
    ({"envs": {"ok": {**RunningStats.from_values([1.0]).to_dict(), "m2": -1.0}}}, ValueError,
     "snapshot env 'ok': m2 must be >= 0"),
])
def test_a_bad_snapshot_is_refused_before_any_request(core: StoreCore, bad: dict[str, Any], error: type[Exception],
                                                      match: str) -> None:
    driver = Driver([])
    with pytest.raises(error, match=match):
        driver.run(core._restore_op({**snapshot(1, {}), **bad}))
    assert driver.requests == []


def test_a_target_key_of_another_type_stops_the_restore_before_the_first_write(core: StoreCore) -> None:
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    entries = {"a": RunningStats.from_values([1.0]).to_dict(), "b": RunningStats.from_values([2.0]).to_dict()}
    driver = Driver([[{}, wrongtype]])
    with pytest.raises(WrongTypeError, match=r"ns:\{b\}"):
        driver.run(core._restore_op(snapshot(1, entries)))
    assert driver.requests == [ReadMany(("ns:{a}", "ns:{b}"))]  # no replace was asked for


def test_export_is_a_snapshot_of_what_the_scan_and_the_read_found(core: StoreCore) -> None:
    requests, exported = drive(core._export_op(), [SCANNED, [plain(2, 1.5, 0.5, 1.0, 2.0), CONFIGURED]])
    assert requests == [ScanKeys("ns:{*}"), ReadMany(("ns:{a}", "ns:{b}"))]
    assert (exported["format"], exported["version"], exported["namespace"]) == ("shared_rewardnorm.snapshot", 2, "ns")
    assert exported["envs"] == {"a": EnvInfo(RunningStats(2, 1.5, 0.5, 1.0, 2.0), merges=1,
                                             updated_at=1700000000000).to_dict(),
                                "b": CONFIGURED_INFO.to_dict()}
    # ...and restoring it asks for the same envs' replaces with the same states.
    requests, _ = drive(core._restore_op(exported), [[{}, {}], REPLACED, CONFIGURED_REPLY])
    assert requests[2] == RunScript("replace", ("ns:{b}",), (encode_stats(CONFIGURED_INFO.stats),
                                                             encode_state(CONFIGURED_INFO)))


# --- configure, freeze, load_functions -------------------------------------------------------------


@pytest.mark.parametrize(("half_life", "argument"), [(0.1, "0.10000000000000001"), (8, "8"), (None, "none")])
def test_configure_sends_the_half_life_exactly(core: StoreCore, half_life: float | None, argument: str) -> None:
    requests, changed = drive(core._configure_op("e", half_life), [b"1"])
    assert requests == [RunScript("configure", ("ns:{e}",), (argument,))] and changed is True
    assert drive(core._configure_op("e", half_life), ["0"])[1] is False  # "unchanged", from a decoding client


@pytest.mark.parametrize("half_life", [0, -1.0, math.inf, math.nan, True, "8"])
def test_configure_refuses_a_bad_half_life_before_any_request(core: StoreCore, half_life: Any) -> None:
    driver = Driver([])
    with pytest.raises(ValueError, match="half_life must be a positive finite number of samples or None"):
        driver.run(core._configure_op("e", half_life))
    assert driver.requests == []


def test_freeze_and_unfreeze_send_the_flag(core: StoreCore) -> None:
    assert drive(core._freeze_op("e", True), [b"1"]) == ([RunScript("freeze", ("ns:{e}",), ("1",))], True)
    assert drive(core._freeze_op("e", False), [b"0"]) == ([RunScript("freeze", ("ns:{e}",), ("0",))], False)


def test_load_functions_returns_the_library_name(core: StoreCore) -> None:
    assert drive(core._load_functions_op(), [b"shared_rewardnorm"]) == ([LoadFunctions()], "shared_rewardnorm")
    # A cluster client answers per primary: one name from all of them...
    per_primary = {"127.0.0.1:7000": b"shared_rewardnorm", "127.0.0.1:7001": b"shared_rewardnorm"}
    assert drive(core._load_functions_op(), [per_primary])[1] == "shared_rewardnorm"
    # ...or an error naming both.
    with pytest.raises(RuntimeError, match=r"answered FUNCTION LOAD differently: \['a', 'b'\]"):
        drive(core._load_functions_op(), [{"n1": b"a", "n2": b"b"}])
