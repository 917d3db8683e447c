"""The prompt statistics' pure parts: the exact record codec (Python and Lua agree bit for bit),
corrupt records refused by name, input checks, and the ledger's exactly-once requests for writes
other than merges."""

from __future__ import annotations

import math
import random
import struct

import fakeredis
import pytest

from shared_rewardnorm import CorruptStatsError, PromptStats
from shared_rewardnorm._core.ledger import BatchLedger
from shared_rewardnorm._core.prompt_ops import (
    DEFAULT_BUCKETS,
    MAX_BUCKETS,
    PromptInfo,
    decode_double,
    encode_double,
    format_record,
    parse_record,
)
from shared_rewardnorm._redis.scripts import helpers_source


def awkward_doubles(count: int) -> list[float]:
    rng = random.Random(5)
    values = [0.0, -0.0, 1.0, -1.0, 0.1, 1e6 + 0.1, 5e-324, -5e-324, 2.2250738585072014e-308,
              2.225073858507201e-308, 1.7976931348623157e308, -1.7976931348623157e308, 2.0 ** -1022, 1 / 3]
    while len(values) < count:
        bits = rng.getrandbits(64)
        value = struct.unpack(">d", struct.pack(">Q", bits))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def test_the_codec_round_trips_every_finite_double_exactly() -> None:
    for value in awkward_doubles(3000):
        text = encode_double(value)
        assert len(text) == 11 and all("0" <= char <= "o" for char in text)
        back = decode_double(text)
        assert back is not None
        assert struct.pack(">d", back) == struct.pack(">d", value)  # the very bits, -0.0 included


def test_lua_encodes_and_decodes_exactly_as_python() -> None:
    values = awkward_doubles(400)
    script = helpers_source() + """
        local out = {}
        for i = 1, #ARGV do
          local text = encode_double(tonumber(ARGV[i]))
          out[#out + 1] = text
          out[#out + 1] = string.format('%.17g', decode_double(text, 1))
        end
        return out"""
    client = fakeredis.FakeRedis()
    replies = client.eval(script, 0, *("%.17g" % value for value in values))
    for index, value in enumerate(values):
        assert replies[2 * index].decode() == encode_double(value), value
        assert float(replies[2 * index + 1]) == value


@pytest.mark.parametrize("text", ["", "1,1", "1,1,abc", "x,1," + "0" * 22, "1,1," + "0" * 21, "1,1," + "p" * 22,
                                  "1,1," + "0" * 23, "1,1," + encode_double(1.0) + encode_double(-1.0),
                                  "1,1," + "o" * 22, "1,2," + encode_double(1.0) + encode_double(0.0)
                                  + encode_double(-2.0), "1,-1," + "0" * 22])
def test_corrupt_records_are_refused_naming_the_bucket_and_the_prompt(text: str) -> None:
    with pytest.raises(CorruptStatsError, match=r"corrupt prompt record in b:\{e\}:p:3: prompt 'q7'") as caught:
        parse_record("b:{e}:p:3", "q7", text)
    assert caught.value.field == "q7"


def test_a_record_holds_its_weight_only_when_it_differs_from_the_count() -> None:
    plain = PromptInfo(3, 7, 7.0, 0.25, 1.5)
    decayed = PromptInfo(3, 7, 5.5, 0.25, 1.5)
    assert len(format_record(plain)) == len("3,7,") + 22
    assert len(format_record(decayed)) == len("3,7,") + 33
    assert parse_record("k", "p", format_record(plain)) == plain
    assert parse_record("k", "p", format_record(decayed)) == decayed


def test_python_and_lua_name_the_same_layout_constants() -> None:
    lua = helpers_source()
    assert f"local DEFAULT_PROMPT_BUCKETS = {DEFAULT_BUCKETS}\n" in lua
    assert f"local MAX_PROMPT_BUCKETS = {MAX_BUCKETS}\n" in lua


@pytest.mark.parametrize(("ids", "rewards", "error", "match"), [
    ("abc", [1.0], TypeError, "prompt_ids must be a sequence of str ids, not a bare str"),
    (["a", 3], [1.0, 2.0], TypeError, r"prompt_ids\[1\] is a int \(3\), not a str"),
    (["a", ""], [1.0, 2.0], ValueError, r"prompt_ids\[1\] is empty"),
    (["a" * 257], [1.0], ValueError, r"prompt_ids\[0\] is 257 characters long"),
    (["a", "b"], [1.0], ValueError, "rewards has 1 values for 2 prompt ids"),
    (["a", "b"], [1.0, math.nan], ValueError, r"rewards\[1\] = nan is not finite"),
    (["a"], [math.inf], ValueError, r"rewards\[0\] = inf is not finite"),
    (["a"], ["x"], TypeError, r"rewards\[0\] is a str"),
])
def test_bad_input_is_refused_before_anything_is_sent(namespace: str, ids: object, rewards: object,
                                                     error: type[Exception], match: str) -> None:
    prompts = PromptStats("env", fakeredis.FakeRedis(), namespace=namespace)
    with pytest.raises(error, match=match):
        prompts.update(ids, rewards)
    with pytest.raises(error, match=match):
        prompts.advantages(ids, rewards)
    assert prompts.store.client.keys("*") == []


@pytest.mark.parametrize("decay", [0, -0.5, 1.5, math.nan, True, "0.9"])
def test_a_decay_outside_zero_to_one_is_refused(namespace: str, decay: object) -> None:
    prompts = PromptStats("env", fakeredis.FakeRedis(), namespace=namespace)
    with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\]"):
        prompts.configure(decay=decay)  # type: ignore[arg-type]


def test_a_named_write_sent_again_goes_out_in_the_same_request() -> None:
    ledger = BatchLedger(100, clock=lambda: 0.0)
    first = ledger.request_for_write("k", "prompt_update", ("16",), ("3", "a"), batch_id="b1", encoded="x",
                                     about="1 rewards for 1 prompts")
    again = ledger.request_for_write("k", "prompt_update", ("16",), ("3", "a"), batch_id="b1", encoded="x",
                                     about="1 rewards for 1 prompts")
    other = ledger.request_for_write("k", "prompt_update", ("16",), ("3", "a"), batch_id=None, encoded="",
                                     about="")
    assert again is first
    assert first.args[0] == "16" and first.args[2] == "100" and first.args[3:] == ("3", "a")
    assert first.keys[1].startswith("k:batches:")
    assert other.args[1] != first.args[1]  # a new sequence number
    with pytest.raises(ValueError, match=r"batch_id 'b1' was already used in k for a different batch "
                                         r"\(1 rewards for 1 prompts; now 2 rewards for 1 prompts\)"):
        ledger.request_for_write("k", "prompt_update", ("16",), ("3", "b"), batch_id="b1", encoded="y",
                                 about="2 rewards for 1 prompts")
