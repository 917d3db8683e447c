"""Per-prompt statistics at scale: memory per prompt at 1M prompts and server time per prompt.

Starts a private ``redis-server`` (no persistence) on a free loopback port, fills one env's prompt
set with ``--prompts`` prompts (default 1,000,000) through ``PromptStats.update`` calls of 256
prompts (0/1 rewards; with ``--decay`` below 1 every record carries its weight, the longer form),
and reports:

- memory: ``INFO memory`` used_memory after the fill (``--visits`` passes over every prompt)
  minus before, per prompt, and the encoding of the buckets (``OBJECT ENCODING``: listpack is
  the compact one);
- server time: ``INFO commandstats`` (usec of EVALSHA) over ``--calls`` updates of 256 distinct
  existing prompts each, per call and per prompt, beside a no-op EVALSHA's;
- reading the whole set with ``PromptStats.items`` (wall time, and the longest single command
  the server ran, from ``INFO commandstats`` of HGETALL);
- where a prompt's time goes (scripts doing one part of the work each), and the floor of the
  storage alone in this layout and in one big hash (the trade between memory and commands).

Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root: the test helpers are the package tests.support
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import Printer, argument_parser, machine_rows  # noqa: E402

from shared_rewardnorm import PromptStats, StatsStore  # noqa: E402
from shared_rewardnorm._core.prompt_ops import bucket_key, bucket_of  # noqa: E402
from shared_rewardnorm._redis.scripts import script_source  # noqa: E402

BATCH = 256


def command_usec(client: redis.Redis, command: str) -> tuple[int, float]:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0.0))


def ids_for(kind: str, count: int) -> list[str]:
    if kind == "index":
        return [str(index) for index in range(count)]
    return [f"{random.getrandbits(64):016x}" for _ in range(count)]


#: Scripts doing one part of prompt_update's per-prompt work over the same 256-prompt arguments.
PARTS = {
    "bare HGET + HSET of the record (the storage)":
        "for i = 4, #ARGV, 5 do local k = prefix .. ARGV[i]; local v = redis.call('HGET', k, ARGV[i + 1]); "
        "if v then redis.call('HSET', k, ARGV[i + 1], v) end end return 1",
    "decode + encode the record (the codec, no redis.call)":
        "local t = '3,4,' .. encode_double(0.3) .. encode_double(1.7) .. encode_double(3.9) local n = 0 "
        "for i = 4, #ARGV, 5 do local p = parse_prompt(KEYS[1], ARGV[i + 1], t); n = n + #format_prompt(p) end "
        "return n",
    "parse the arguments (bucket, count, mean, m2)":
        "local n = 0 for i = 4, #ARGV, 5 do "
        "local k = prompt_bucket_key(KEYS[1], prefix, {buckets = 1048576}, ARGV[i]); "
        "n = n + tonumber(ARGV[i + 2]) + parse_finite(ARGV[i + 3]) + parse_finite(ARGV[i + 4]) end return n",
}


def parts(client: redis.Redis, key: str, batches: list[list[str]], buckets: int) -> list[list[str]]:
    """Each part's server time per prompt (INFO commandstats), its script run over the same calls."""
    library = script_source("prompt_update").split("\nif #KEYS ~= 2", 1)[0]
    library += "\nlocal prefix = prompt_bucket_prefix(KEYS[1])\n"
    rows = []
    for name, body in PARTS.items():
        script = client.register_script(library + body)
        calls = [["0", "0", "0", *[word for prompt in batch for word in (str(bucket_of(prompt, buckets)), prompt,
                                                                          "1", "0.5", "0")]] for batch in batches]
        script(keys=[key], args=calls[0])
        client.config_resetstat()
        for args in calls:
            script(keys=[key], args=args)
        count, usec = command_usec(client, "evalsha")
        rows.append([name, f"{usec / count / BATCH:.2f}"])
    return rows


#: The storage floor of a 256-prompt update in two layouts, with none of prompt_update's work but
#: the reads and writes: a C codec (Redis's ``struct``, which the embedded store's Lua lacks), no
#: argument checks, no merge arithmetic. ARGV: (bucket, id) pairs; KEYS[1] the bucket prefix.
FLOOR_PER_PROMPT = """
for i = 1, #ARGV, 2 do
  local k = KEYS[1] .. ARGV[i]
  local a, b, c, d, e = struct.unpack('<ddddd', redis.call('HGET', k, ARGV[i + 1]))
  redis.call('HSET', k, ARGV[i + 1], struct.pack('<ddddd', a + 1, b + 1, c + 1, d, e))
end
return 1
"""
#: One HMGET and one HSET for all of a call's prompts (possible only when they share one hash).
FLOOR_ONE_HASH = """
local fields = {}
for i = 2, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
local values = redis.call('HMGET', KEYS[1] .. '0', unpack(fields))
local writes = {}
for j = 1, #fields do
  local a, b, c, d, e = struct.unpack('<ddddd', values[j])
  writes[#writes + 1] = fields[j]
  writes[#writes + 1] = struct.pack('<ddddd', a + 1, b + 1, c + 1, d, e)
end
redis.call('HSET', KEYS[1] .. '0', unpack(writes))
return 1
"""


def floors(client: redis.Redis, ids: list[str], batches: list[list[str]]) -> list[list[str]]:
    """Memory per prompt and server time per prompt of the bare storage (FLOOR_* above) in the
    layout prompt_update uses (16,384 listpack buckets, a command per prompt) and in one big
    hash (hashtable encoding: one HMGET and one HSET per call)."""
    import struct
    import zlib

    record = struct.pack("<ddddd", 3, 4, 4, 0.5, 0.25)  # 40 B: visits, count, weight, mean, m2
    rows = []
    for name, buckets, body in (("16,384 listpack buckets, HGET + HSET per prompt", 16384, FLOOR_PER_PROMPT),
                                ("one hash (hashtable), one HMGET + one HSET per call", 1, FLOOR_ONE_HASH)):
        prefix = f"floor-{buckets}:"
        client.execute_command("MEMORY", "PURGE")
        before = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        for index, prompt_id in enumerate(ids):
            pipe.hset(f"{prefix}{zlib.crc32(prompt_id.encode()) % buckets}", prompt_id, record)
            if index % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        memory = (int(client.info("memory")["used_memory"]) - before) / len(ids)
        encoding = client.object("encoding", f"{prefix}0")
        script = client.register_script(body)
        calls = [[word for prompt_id in batch for word in (str(zlib.crc32(prompt_id.encode()) % buckets), prompt_id)]
                 for batch in batches]
        script(keys=[prefix], args=calls[0])
        client.config_resetstat()
        for args in calls:
            script(keys=[prefix], args=args)
        count, usec = command_usec(client, "evalsha")
        rows.append([name, f"{memory:.1f} B ({encoding.decode() if isinstance(encoding, bytes) else encoding})",
                     f"{usec / count / BATCH:.2f}"])
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, url=False, quick="100,000 prompts and fewer calls")
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=2000, help="timed 256-prompt updates")
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--visits", type=int, default=2,
                        help="fill passes over every prompt (from 2 on, with decay, records carry their weight)")
    parser.add_argument("--ids", choices=("index", "hex"), default="index",
                        help="prompt ids: dataset indexes ('0'..'999999') or 16-hex-digit hashes")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.calls = 100_000, 300
    random.seed(0)
    out = Printer(args.markdown)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis(port=server.port, socket_timeout=60)
        store = StatsStore(client, "bench", functions=False)
        prompts = PromptStats("scale", store)
        prompts.configure(decay=args.decay)
        ids = ids_for(args.ids, args.prompts)
        rng = random.Random(1)
        client.execute_command("MEMORY", "PURGE")
        before = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        for _ in range(args.visits):
            for start in range(0, len(ids), BATCH):
                chunk = ids[start:start + BATCH]
                prompts.update(chunk, [float(rng.random() < 0.5) for _ in chunk])
        fill_seconds = time.perf_counter() - started
        after = int(client.info("memory")["used_memory"])
        settings = prompts.settings()
        sizes = [int(client.hlen(bucket_key(prompts.key, bucket))) for bucket in range(0, settings.buckets, 16)]
        encodings: dict[str, int] = {}
        for bucket in range(0, settings.buckets, 64):
            kind = client.object("encoding", bucket_key(prompts.key, bucket))
            name = kind.decode() if isinstance(kind, bytes) else str(kind)
            encodings[name] = encodings.get(name, 0) + 1
        longest_id = max(ids, key=len)
        record = client.hget(bucket_key(prompts.key, bucket_of(longest_id, settings.buckets)), longest_id) or b""

        out.heading(f"Memory: {args.prompts:,} prompts in one env ({settings.buckets} buckets, decay {args.decay}, "
                    f"{args.visits} visits each)")
        out.table(["measure", "value"], [
            ["used_memory delta", f"{after - before:,} B"],
            ["per prompt", f"{(after - before) / args.prompts:.1f} B"],
            ["record length (longest id's)", f"{len(record)} B, id {len(longest_id)} B"],
            ["prompts per bucket (sampled): mean / max", f"{sum(sizes) / len(sizes):.1f} / {max(sizes)}"],
            ["bucket encodings (sampled)", ", ".join(f"{name}: {count}" for name, count in sorted(encodings.items()))],
            ["fill: wall seconds (client and server)", f"{fill_seconds:.1f}"],
        ])

        noop = client.register_script("return 1")
        client.config_resetstat()
        for _ in range(args.calls):
            noop(keys=[prompts.key])
        noop_calls, noop_usec = command_usec(client, "evalsha")
        batches = [rng.sample(ids, BATCH) for _ in range(args.calls)]
        rewards = [[float(rng.random() < 0.5) for _ in range(BATCH)] for _ in range(args.calls)]
        client.config_resetstat()
        for chunk, values in zip(batches, rewards, strict=True):
            prompts.update(chunk, values)
        calls, usec = command_usec(client, "evalsha")
        per_call = usec / calls
        out.heading(f"Server time (INFO commandstats): {calls} updates of {BATCH} existing prompts")
        out.table(["measure", "usec"], [
            ["no-op EVALSHA, per call", f"{noop_usec / noop_calls:.1f}"],
            ["prompt_update, per call", f"{per_call:.1f}"],
            ["prompt_update, per prompt", f"{per_call / BATCH:.2f}"],
            ["per prompt, without the call's fixed cost (no-op)", f"{(per_call - noop_usec / noop_calls) / BATCH:.2f}"],
        ])

        client.config_resetstat()
        started = time.perf_counter()
        seen = sum(1 for _ in prompts.items())
        read_seconds = time.perf_counter() - started
        reads, read_usec = command_usec(client, "hgetall")
        out.heading("Reading the whole set (PromptStats.items, 256 buckets per round trip)")
        out.table(["measure", "value"], [
            ["prompts read", f"{seen:,}"],
            ["wall seconds", f"{read_seconds:.1f}"],
            ["HGETALL commands / mean usec each", f"{reads:,} / {read_usec / max(reads, 1):.1f}"],
        ])
        out.heading("Where the time of a prompt goes (same server, same buckets, per prompt)")
        out.table(["part", "usec per prompt"], parts(client, prompts.key, batches[:200], settings.buckets))
        out.heading("The storage floor: reads and writes alone, in two layouts (40 B binary records, struct codec)")
        out.table(["layout", "memory per prompt", "usec per prompt"], floors(client, ids, batches[:300]))
        out.heading("Machine")
        out.table(["", ""], machine_rows(client, server.url))
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
