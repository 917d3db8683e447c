"""The stats schema is named once per language: ``shared_rewardnorm/schema.py`` for Python and
the ``*_FIELDS`` tables at the top of ``lua/stats_lib.lua`` for Lua. These tests check that the
two agree, that what the scripts store is exactly that schema, and that a hash missing a field
is reported as *missing* by the scripts and by the Python decoder alike."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared_rewardnorm import CorruptStatsError, SharedRewardNormalizer, StatsStore, schema
from shared_rewardnorm.scripts import _read_lua

_LUA_TABLE = re.compile(r"^local (\w+_FIELDS) = \{([^}]*)\}", re.MULTILINE)


def lua_schema() -> dict[str, tuple[str, ...]]:
    """Every ``local NAME_FIELDS = {'a', 'b'}`` table of stats_lib.lua, by name."""
    tables = {}
    for name, body in _LUA_TABLE.findall(_read_lua("stats_lib")):
        tables[name] = tuple(re.findall(r"'([^']*)'", body))
    return tables


def python_schema() -> dict[str, tuple[str, ...]]:
    return {name: getattr(schema, name) for name in schema.__all__ if name.endswith("_FIELDS")}


def test_lua_and_python_name_the_same_fields() -> None:
    lua, python = lua_schema(), python_schema()
    assert lua, "no *_FIELDS table found in stats_lib.lua"
    assert lua == python


def test_a_merge_stores_exactly_the_schema(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 4.0])
    stored = {field.decode() for field in raw_client.hkeys(store.key("env"))}
    assert stored == set(schema.STAT_FIELDS) | set(schema.DISPLAY_FIELDS)


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
