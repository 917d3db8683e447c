"""The sans-I/O pieces of prompt faults: the local merge arithmetic against the definition, the
identity verdicts, the bounded cache and the owed calls."""

from __future__ import annotations

import random

import pytest

from shared_rewardnorm._core.prompt_outage import (
    IDENTITY_NONE,
    PromptCache,
    PromptFallback,
    PromptVerdict,
    judge_prompt_set,
    older_then,
    visited,
)
from shared_rewardnorm.stats import summarize
from tests.support.prompt_oracle import DefinitionOracle, assert_matches


def summary_of(values: list[float]) -> tuple[int, float, float]:
    stats = summarize(values)
    return stats.count, stats.mean, stats.m2


@pytest.mark.parametrize("decay", [1.0, 0.9, 0.5])
def test_visits_and_a_heal_equal_the_definition(decay: float) -> None:
    """Visits applied one by one, and the same visits split at a "loss" into an older record and
    the visits since (put together by older_then), both equal the per-sample definition."""
    rng = random.Random(3)
    oracle = DefinitionOracle(decay)
    visits = [[1e6 + rng.random() for _ in range(rng.randint(1, 6))] for _ in range(40)]
    whole = older = since = None
    for index, values in enumerate(visits):
        oracle.call(["p"] * len(values), values)
        whole = visited(whole, summary_of(values), decay)
        if index < 25:
            older = visited(older, summary_of(values), decay)
        else:
            since = visited(since, summary_of(values), decay)
    assert older is not None
    assert_matches(whole, oracle.expected("p"))
    assert_matches(older_then(older, since, decay), oracle.expected("p"))
    assert older_then(older, None, decay) == older


def test_the_verdicts() -> None:
    assert judge_prompt_set(None, ("7", "update"), set()) is PromptVerdict.SAME  # nothing known: nothing lost
    assert judge_prompt_set("7", ("7", "reseed"), set()) is PromptVerdict.SAME
    assert judge_prompt_set("7", ("5", "update"), {"5"}) is PromptVerdict.STALE
    assert judge_prompt_set("7", ("9", "replace"), set()) is PromptVerdict.REPLACED
    assert judge_prompt_set("7", ("9", "forget"), set()) is PromptVerdict.REPLACED
    assert judge_prompt_set("7", ("9", "reseed"), set()) is PromptVerdict.RESEEDED
    for origin in ("update", "configure", "seed"):
        assert judge_prompt_set("7", ("9", origin), set()) is PromptVerdict.LOST
    assert judge_prompt_set("7", IDENTITY_NONE, set()) is PromptVerdict.LOST


def test_the_cache_keeps_the_most_recently_seen() -> None:
    cache = PromptCache(2)
    record = visited(None, (1, 1.0, 0.0), 1.0)
    for prompt_id in ("a", "b", "a", "c"):
        cache.put(prompt_id, record)
    assert [prompt_id for prompt_id, _ in cache.items()] == ["a", "c"]
    cache.put("a", None)
    assert len(cache) == 1 and cache.get("a") is None
    empty = PromptCache(0)
    empty.put("a", record)
    assert len(empty) == 0


def test_owed_calls_keep_their_order_ids_and_bound() -> None:
    cache = PromptCache(10)
    cache.put("a", visited(None, (2, 0.5, 0.5), 1.0))
    fallback = PromptFallback("math", max_owed=2, clock=lambda: 0.0)
    fallback.owe({"a": (1, 1.0, 0.0)}, "id-1", cache, 1.0)
    fallback.owe({"a": (1, 1.0, 0.0)}, "id-1", cache, 1.0)  # the same name is one call
    assert fallback.owed == 1
    view = fallback.view("a", cache)
    assert view is not None and (view.visits, view.count, view.mean) == (2, 3, pytest.approx(2 / 3))
    fallback.owe({"b": (1, 0.0, 0.0)}, "id-2", cache, 1.0)
    fallback.owe({"b": (1, 1.0, 0.0)}, "id-3", cache, 1.0)
    assert (fallback.owed, fallback.dropped) == (2, 1)
    owed = fallback.next_owed()
    assert owed is not None and owed.batch_id == "id-2"
    fallback.paid(owed)
    last = fallback.next_owed()
    assert last is not None and last.batch_id == "id-3"
    fallback.paid(last)
    assert fallback.owed == 0 and fallback.view("a", cache) == cache.get("a")  # the view is the cache's again
