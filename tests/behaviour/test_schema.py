"""The stats schema is named once per language: ``shared_rewardnorm/_core/schema.py`` for Python and
the ``*_FIELDS`` tables at the top of ``lua/stats_lib.lua`` for Lua. These tests check that the
two agree, that what the scripts store is exactly that schema, and that a hash missing a field
is reported as *missing* by the scripts and by the Python decoder alike."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared_rewardnorm import CorruptStatsError, SharedRewardNormalizer, StatsStore
from shared_rewardnorm._core import schema
from shared_rewardnorm._redis.scripts import _read_lua

#: Every field list Python names, including the derived ones (their order is the reply order).
NAMES = (*schema.GROUPS, "ENV_FIELDS", "STATE_FIELDS")


def test_lua_and_python_name_the_same_fields(raw_client: Any) -> None:
    """Run stats_lib.lua itself and return its tables: the Lua definitions as the scripts see
    them (a name missing in Lua fails as an undefined variable)."""
    probe = _read_lua("stats_lib") + "\nreturn {" + ", ".join(NAMES) + "}"
    lua = raw_client.eval(probe, 0)
    assert {name: tuple(field.decode() for field in fields) for name, fields in zip(NAMES, lua, strict=True)} == {
        name: getattr(schema, name) for name in NAMES}


def test_every_lua_field_table_is_compared() -> None:
    """A new ``local X_FIELDS = {...}`` in stats_lib.lua must be named in schema.py too."""
    defined = set(re.findall(r"^local (\w+_FIELDS) =", _read_lua("stats_lib"), re.MULTILINE))
    assert defined == set(NAMES)


def test_a_merge_stores_exactly_the_schema(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 4.0])
    stored = {field.decode() for field in raw_client.hkeys(store.key("env"))}
    assert stored == {*schema.STAT_FIELDS, *schema.ACTIVITY_FIELDS, *schema.IDENTITY_FIELDS, *schema.DISPLAY_FIELDS}
    store.configure("env", half_life=100)
    store.update("env", [3.0])
    store.freeze("env")
    stored = {field.decode() for field in raw_client.hkeys(store.key("env"))}
    assert stored == {*schema.ENV_FIELDS, *schema.DISPLAY_FIELDS}


@pytest.mark.parametrize("field", schema.STAT_FIELDS)
def test_a_missing_field_is_reported_as_missing(backend: Any, namespace: str, raw_client: Any, field: str) -> None:
    """Scripts (update, normalize) and Python reads (get, get_many) both say "<field> is missing",
    name the key and field, and change nothing."""
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 3.0])
    key = store.key("env")
    raw_client.hdel(key, field)
    before = raw_client.hgetall(key)
    norm = SharedRewardNormalizer("env", store)
    for operation in (lambda: store.update("env", [1.0]), lambda: norm.normalize([1.0]),
                      lambda: store.get("env"), lambda: store.get_many(["env"])):
        with pytest.raises(CorruptStatsError, match=rf"{re.escape(key)}.*\b{field} is missing") as info:
            operation()
        assert (info.value.key, info.value.field) == (key, field)
    assert raw_client.hgetall(key) == before


@pytest.mark.parametrize("field", ["decayed", *schema.CONFIG_FIELDS, *schema.ACTIVITY_FIELDS])
def test_a_version_2_snapshot_entry_missing_a_key_is_refused(backend: Any, namespace: str, raw_client: Any,
                                                             field: str) -> None:
    """A version-2 entry without, say, ``frozen`` would otherwise restore as not frozen: every
    key is required, the error names the env and the key, and nothing is written."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=8)
    store.update("env", [1.0, 2.0])
    store.freeze("env")
    snapshot = store.export()
    entry = dict(snapshot["envs"]["env"])
    del entry[field]
    before = raw_client.hgetall(store.key("env"))
    with pytest.raises(ValueError, match=rf"snapshot env 'env': missing {field} \(a version-2 entry"):
        store.restore({**snapshot, "envs": {"env": entry}})
    assert raw_client.hgetall(store.key("env")) == before
    # A version-1 entry still needs only the totals.
    totals = {name: entry.get(name, snapshot["envs"]["env"][name]) for name in schema.STAT_FIELDS}
    store.restore({**snapshot, "version": 1, "envs": {"env": totals}})
    assert store.info("env").frozen and store.get("env").count == 2
