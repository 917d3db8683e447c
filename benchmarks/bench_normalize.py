#!/usr/bin/env python
"""Benchmark of ``SharedRewardNormalizer.normalize`` against a real Redis server.

Every performance figure is a ratio measured within one run, with the two sides interleaved in
chunks (A, B, B, A, A, B, ...), because absolute numbers on a small, shared machine move by tens
of percent from one minute to the next. The script prints tables and asserts nothing.

Sections:

1. ``normalize`` calls/s at batch 1, 16 and 256 against PING round trips/s of the same client,
   and the bare EVALSHA of the merge script (precomputed arguments) as a floor, also with the very
   keys and arguments ``normalize`` sends (captured from one call).
2. Batch 256 through Redis against the reference's in-process ``RewardNormalizer.normalize``
   (loaded at run time from ``--reference``; the section is skipped if the file is missing).
3. Bytes sent per ``normalize`` call at batch 1, 16 and 256, counted on the socket.
4. 8 processes normalizing into one env: our merge script against a client-side WATCH/MULTI
   optimistic transaction doing the same merge (aggregate calls/s, retries, round trips).
5. Variance error at offset 1e6: the HINCRBYFLOAT sum/sum-of-squares shortcut against ours,
   both against a two-pass ``math.fsum`` reference.
6. The reply parser: redis-py with hiredis against its pure-Python parser, PING and
   ``normalize`` at batch 16 and 256, interleaved (skipped when hiredis is not installed).
7. Where the client's time per ``normalize`` call goes (batch 16 and 256): each stage
   (validation, summary, encoding, reply parsing, normalization) timed alone with the network
   stubbed out, the whole operation driven with a canned reply, redis-py packing the command,
   and a cProfile of real calls grouped by module (this library, redis-py, the socket, other).

Usage::

    python benchmarks/bench_normalize.py [--url redis://127.0.0.1:6379/0] [--quick] [--markdown]

Keys live under a random ``bench-<hex>:`` namespace and are deleted at the end.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.connection
from redis.exceptions import WatchError

from shared_rewardnorm import RunningStats, SharedRewardNormalizer, StatsStore
from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._core.protocol import encode_sequence, encode_stats
from shared_rewardnorm._core.schema import STAT_FIELDS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Printer,
    argument_parser,
    fmt_rate,
    fmt_ratio,
    machine_rows,
    make_batches,
    nproc,
    progress,
    quartiles,
    scratch_namespace,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "seed" / "reward_normalization.py"

GOAL_PING_RATIO = 0.75   # section 1: normalize/PING at batch 16
GOAL_REFERENCE = 1.3     # section 2: reference time / ours at batch 256
GOAL_CONCURRENT = 1.5    # section 4: ours/WATCH aggregate calls/s


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Counting connections (sections 3 and 4)
# --------------------------------------------------------------------------------------------

#: Per-process counters: ``sends`` counts send_packed_command calls (one per round trip: a
#: pipeline is one call), ``sent``/``received`` count bytes on the socket.
COUNTS = {"sends": 0, "sent": 0, "received": 0}


def reset_counts() -> None:
    for name in COUNTS:
        COUNTS[name] = 0


class RoundTripCountingConnection(redis.connection.Connection):
    """Counts requests: redis-py sends each command, or each whole pipeline, with one call."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        COUNTS["sends"] += 1
        return super().send_packed_command(command, check_health)


class _CountingSocket:
    """A socket proxy counting the bytes that really cross it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def sendall(self, data: Any, *args: Any) -> None:
        COUNTS["sent"] += memoryview(data).nbytes
        return self._sock.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> int:
        sent = self._sock.send(data, *args)
        COUNTS["sent"] += sent
        return sent

    def recv(self, *args: Any) -> bytes:
        data = self._sock.recv(*args)
        COUNTS["received"] += len(data)
        return data

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count = self._sock.recv_into(buffer, *args)
        COUNTS["received"] += count
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ByteCountingConnection(RoundTripCountingConnection):
    """Also counts the bytes sent and received on the TCP socket itself."""

    def _connect(self) -> Any:
        return _CountingSocket(super()._connect())


def counting_client(url: str, connection_class: type) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(url, connection_class=connection_class)
    return redis.Redis(connection_pool=pool)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def timed_chunk(func: Callable[[Any], Any], items: list[Any], start: int, calls: int) -> float:
    """Seconds for ``calls`` calls of ``func`` on items cycled from ``start``."""
    n = len(items)
    todo = [items[(start + i) % n] for i in range(calls)]
    t0 = time.perf_counter()
    for item in todo:
        func(item)
    return time.perf_counter() - t0


@dataclass
class Interleaved:
    a_seconds: list[float]
    b_seconds: list[float]
    calls: int

    @property
    def a_rate(self) -> float:
        return self.calls * len(self.a_seconds) / sum(self.a_seconds)

    @property
    def b_rate(self) -> float:
        return self.calls * len(self.b_seconds) / sum(self.b_seconds)

    def ratios(self) -> list[float]:
        """Per chunk: rate of A / rate of B (= time of B / time of A for equal calls)."""
        return [b / a for a, b in zip(self.a_seconds, self.b_seconds)]


def interleave(a: Callable[[Any], Any], a_items: list[Any], b: Callable[[Any], Any], b_items: list[Any],
               chunks: int, calls: int, offset: int = 0) -> Interleaved:
    """Run A and B in alternating chunks (A B, B A, A B, ...) so drift hits both alike."""
    a_seconds, b_seconds = [], []
    for chunk in range(offset, offset + chunks):
        start = chunk * calls
        if chunk % 2 == 0:
            a_seconds.append(timed_chunk(a, a_items, start, calls))
            b_seconds.append(timed_chunk(b, b_items, start, calls))
        else:
            b_seconds.append(timed_chunk(b, b_items, start, calls))
            a_seconds.append(timed_chunk(a, a_items, start, calls))
    return Interleaved(a_seconds, b_seconds, calls)


def load_reference(path: Path) -> Any:
    """The reference module, loaded by path (never copied into this repository)."""
    spec = importlib.util.spec_from_file_location("reference_reward_normalization", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    ping_chunks: int        # section 1
    ping_calls: int
    ref_chunks: int         # section 2
    ref_calls: int
    byte_calls: int         # section 3
    procs: int              # section 4
    proc_calls: int
    proc_rounds: int
    var_batches: int        # section 5


FULL = Plan(ping_chunks=20, ping_calls=300, ref_chunks=20, ref_calls=150, byte_calls=50,
            procs=8, proc_calls=800, proc_rounds=3, var_batches=1200)
QUICK = Plan(ping_chunks=6, ping_calls=80, ref_chunks=6, ref_calls=40, byte_calls=10,
             procs=8, proc_calls=100, proc_rounds=2, var_batches=1200)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def section_machine(out: Printer, client: redis.Redis, url: str, plan: Plan, quick: bool) -> None:
    out.heading("Machine")
    out.table(["what", "value"], [*machine_rows(client, url), ["run", "quick" if quick else "full"]])


def capture_script_calls(client: redis.Redis, func: Callable[[], Any]) -> list[tuple[str, Any, int, tuple]]:
    """The successful EVALSHA / FCALL calls ``func`` makes through ``client``:
    (method, sha or function name, numkeys, keys and args)."""
    captured: list[tuple[str, Any, int, tuple]] = []

    def recorder(method: str) -> Callable[..., Any]:
        original = getattr(client, method)

        def recording(target: Any, numkeys: int, *keys_and_args: Any) -> Any:
            reply = original(target, numkeys, *keys_and_args)
            captured.append((method, target, numkeys, keys_and_args))
            return reply

        return recording

    for method in ("evalsha", "fcall"):
        setattr(client, method, recorder(method))
    try:
        func()
    finally:
        for method in ("evalsha", "fcall"):
            delattr(client, method)
    return captured


def script_server_usec(client: redis.Redis) -> tuple[int, int]:
    """(calls, usec) of EVALSHA plus FCALL from INFO commandstats (server-wide)."""
    stats = client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_fcall"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


def section_ping(out: Printer, client: redis.Redis, ns: str, plan: Plan) -> None:
    progress("section 1: normalize vs PING")
    out.heading("1. normalize calls/s vs PING round trips/s (same client, interleaved)")
    ping = lambda _item: client.ping()  # noqa: E731
    pings = [None]
    rows = []
    notes = []
    results: dict[str, Interleaved] = {}

    variants: list[tuple[str, str, Callable[[Any], Any], list[Any]]] = []
    for size in (1, 16, 256):
        normalizer = SharedRewardNormalizer(f"ping-b{size:04d}", client, mode="zscore", namespace=ns)
        variants.append((f"normalize, batch {size}", f"normalize {size}", normalizer.normalize,
                         make_batches(size, 64, seed=size)))

    # The floor: EVALSHA of the merge script with precomputed arguments, without the batch
    # identity (1 key, the stats argument): what the script costs with no Python around it.
    store = StatsStore(client, ns, functions=False)
    key = store.key("ping-evalsha")
    stats_arg = encode_stats(RunningStats.from_values(make_batches(16, 1, seed=99)[0]))
    sha = store._scripts.script("merge").sha
    client.script_load(store._scripts.script("merge").script)
    variants.append(("bare EVALSHA of merge, 1 key + 1 arg (floor)", "evalsha",
                     lambda _item: client.evalsha(sha, 1, key, stats_arg), [None]))

    # The same with exactly the keys and arguments normalize sends (captured from one call), the
    # batch sequence number counting on, so the script takes its real path (not a duplicate).
    normalizer = SharedRewardNormalizer("ping-capture", client, mode="zscore", namespace=ns)
    batch = make_batches(16, 1, seed=98)[0]
    normalizer.normalize(batch)  # the first call may try FCALL and fall back to EVALSHA
    captured = capture_script_calls(client, lambda: normalizer.normalize(batch))
    path = "?"
    if len(captured) == 1 and captured[0][2] == 2:
        method, target, numkeys, keys_and_args = captured[0]
        path = method.upper()
        keys, sent = list(keys_and_args[:numkeys]), list(keys_and_args[numkeys:])
        call_method = getattr(client, method)
        sequence = iter(range(int(sent[1]) + 1, 2**53))
        variants.append((f"bare {path} as normalize sends it, {numkeys} keys + {len(sent)} args", "evalsha as sent",
                         lambda _item: call_method(target, numkeys, *keys, sent[0], encode_sequence(next(sequence)),
                                                   sent[2]), [None]))
    else:
        notes.append(f"one normalize call made {len(captured)} script calls in a layout this benchmark does "
                     "not know how to replay; the 'as normalize sends it' floor is skipped")

    for _label, _name, call, items in variants:  # warm up: loads the script, fills the pool
        for item in (items * 20)[:20]:
            call(item)
            client.ping()
    # Every chunk runs every variant against PING, so all rows see the same stretch of time.
    seconds = {name: ([], []) for _label, name, _call, _items in variants}
    server = {name: [0, 0] for _label, name, _call, _items in variants}
    for chunk in range(plan.ping_chunks):
        for _label, name, call, items in variants:
            before = script_server_usec(client)
            pair = interleave(call, items, ping, pings, 1, plan.ping_calls, offset=chunk)
            after = script_server_usec(client)
            seconds[name][0].extend(pair.a_seconds)
            seconds[name][1].extend(pair.b_seconds)
            server[name][0] += after[0] - before[0]
            server[name][1] += after[1] - before[1]
    for label, name, _call, _items in variants:
        result = results[name] = Interleaved(*seconds[name], plan.ping_calls)
        low, mid, high = quartiles(result.ratios())
        calls, usec = server[name]
        rows.append([label, fmt_rate(result.a_rate), fmt_rate(result.b_rate), fmt_ratio(mid),
                     f"{low:.2f}-{high:.2f}", f"{1e6 / result.a_rate:.0f} / {1e6 / result.b_rate:.0f}",
                     f"{usec / calls:.1f}" if calls > 0 else "-"])

    out.table(["call", "calls/s", "PING/s", "ratio (median of chunks)", "ratio p25-p75",
               "us/call (call / PING)", "server us/script call"], rows)
    ratio16 = statistics.median(results["normalize 16"].ratios())
    floor = statistics.median(results["evalsha"].ratios())
    verdict = "met" if ratio16 >= GOAL_PING_RATIO else "NOT met"
    text = (f"goal: normalize/PING >= {GOAL_PING_RATIO} at batch 16; measured {ratio16:.2f} ({verdict}); "
            f"bare EVALSHA floor {floor:.2f}")
    if "evalsha as sent" in results:
        text += f", {statistics.median(results['evalsha as sent'].ratios()):.2f} with normalize's own keys and args"
    out.note(text)
    for note in notes:
        out.note(note)
    out.note(f"normalize reaches the server with {path}; server us/script call: INFO commandstats delta "
             "of EVALSHA+FCALL over the row (other clients' calls, if any, count too): the time "
             "redis-server spends running the script")
    out.note(f"{plan.ping_chunks} chunks of {plan.ping_calls} calls per side, alternating A-B / B-A; "
             "ratio = PING time / call time per chunk")
    out.flush()


def section_reference(out: Printer, client: redis.Redis, ns: str, plan: Plan, reference_path: Path) -> None:
    progress("section 2: batch 256 vs in-process reference")
    out.heading("2. batch 256: SharedRewardNormalizer (Redis round trip) vs reference in process")
    if not reference_path.is_file():
        out.note(f"skipped: reference not found at {reference_path} (pass --reference PATH)")
        return
    reference = load_reference(reference_path)
    ours = SharedRewardNormalizer("ref-b0256", client, mode="zscore", clip=5.0, warmup=10, eps=1e-8,
                                  namespace=ns)
    theirs = reference.RewardNormalizer(mode="zscore", clip=5.0, warmup=10, eps=1e-8)
    batches = make_batches(256, 64, seed=256)
    for batch in batches[:10]:
        ours.normalize(batch)
        theirs.normalize(batch)
    result = interleave(ours.normalize, batches, theirs.normalize, batches, plan.ref_chunks, plan.ref_calls)
    low, mid, high = quartiles(result.ratios())
    ours_us, ref_us = 1e6 / result.a_rate, 1e6 / result.b_rate
    out.table(["batch", "ours us/call (incl. round trip)", "reference us/call (in process)",
               "reference time / ours (median of chunks)", "p25-p75"],
              [[256, f"{ours_us:.0f}", f"{ref_us:.0f}", fmt_ratio(mid), f"{low:.2f}-{high:.2f}"]])
    verdict = "met" if mid >= GOAL_REFERENCE else "NOT met"
    out.note(f"goal: ours >= {GOAL_REFERENCE}x the in-process reference at batch 256, round trip included; "
             f"measured {mid:.2f}x ({verdict})")
    out.note(f"reference loaded from {reference_path}; same 256-value lists of Python floats for both")
    out.flush()


def section_bytes(out: Printer, url: str, ns: str, plan: Plan) -> None:
    progress("section 3: bytes per call")
    out.heading("3. bytes on the socket per normalize call")
    client = counting_client(url, ByteCountingConnection)
    rows = []
    sent_lists = []
    try:
        for size in (1, 16, 256):
            # Env names of equal length, so the key (which is sent) has the same length.
            normalizer = SharedRewardNormalizer(f"bytes-b{size:04d}", client, mode="zscore", namespace=ns)
            batches = make_batches(size, plan.byte_calls, seed=1000 + size)
            for batch in batches[:3]:  # connect, HELLO, script load: not counted
                normalizer.normalize(batch)
            sent, received, trips = [], [], []
            for batch in batches:
                reset_counts()
                normalizer.normalize(batch)
                sent.append(COUNTS["sent"])
                received.append(COUNTS["received"])
                trips.append(COUNTS["sends"])
            sent_lists.append(sent)
            values_text = len(redis.connection.Connection().pack_command("RPUSH", "k", *batches[0])[0]) \
                if size < 2000 else 0
            rows.append([size, _span(sent), _span(received), _span(trips), f"~{values_text:,}"])
    finally:
        client.close()
    out.table(["batch", "bytes sent/call", "bytes received/call", "round trips/call",
               "(for scale: the values as one RESP command)"], rows)
    identical = all(sent == sent_lists[0] for sent in sent_lists)
    out.note("bytes sent are identical for every batch size, call for call" if identical
             else "bytes sent DIFFER between batch sizes")
    if any(len(set(sent)) > 1 for sent in sent_lists):
        out.note("within one batch size the bytes sent vary with the text of per-call arguments (the "
                 "batch sequence number of the exactly-once identity gains a digit at 10, 100, ...)")
    out.note("counted on the TCP socket (sendall/recv) of a redis.Redis with a counting Connection class; "
             "replies vary by a few bytes with the digits %.17g prints")
    out.flush()


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


# ---- section 4: processes ----------------------------------------------------------------


def _zscore_fallback(values: list[float], stats: RunningStats) -> list[float]:
    std = stats.std
    if stats.count < 10:
        result = list(values)
    elif std < 1e-8:
        result = [0.0] * len(values)
    else:
        result = [(v - stats.mean) / (std + 1e-8) for v in values]
    return [max(-5.0, min(5.0, v)) for v in result]


def _watch_normalizer(client: redis.Redis, key: str) -> Callable[[list[float]], tuple[list[float], int]]:
    """Normalize with a client-side optimistic transaction doing the same merge as our script:
    WATCH; HMGET; Chan merge in Python; MULTI, HSET, EXEC (one pipeline); retry on WatchError.
    The client-side work around it (validation, batch summary, normalization) is the package's
    own, so the two sides differ only in how the merge reaches Redis."""
    try:
        from shared_rewardnorm._core.normalization import NormalizerSettings, normalize_values

        settings = NormalizerSettings.create("zscore", 5.0, 10, 1e-8)
        finish = lambda values, stats: normalize_values(values, stats, settings)  # noqa: E731
    except ImportError:  # the package moved things around: same math, written here
        finish = _zscore_fallback

    def normalize(values: list[float]) -> tuple[list[float], int]:
        batch = RunningStats.from_values(values)
        retries = 0
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    stored = pipe.hmget(key, STAT_FIELDS)
                    if stored[0] is None:
                        merged = batch
                    else:
                        old = RunningStats(int(stored[0]), *map(float, stored[1:]))
                        merged = old.merge(batch)
                    pipe.multi()
                    pipe.hset(key, mapping={name: repr(getattr(merged, name)) for name in STAT_FIELDS})
                    pipe.execute()
                    break
                except WatchError:
                    retries += 1
        return finish(values, merged), retries

    return normalize


def _ours_normalizer(normalizer: SharedRewardNormalizer) -> Callable[[list[float]], tuple[list[float], int]]:
    """``normalizer.normalize`` in the shape of ``_watch_normalizer``'s function (it never retries)."""
    return lambda values: (normalizer.normalize(values), 0)


def _worker(index: int, url: str, rounds: list[tuple[str, str]], calls: int, batch_size: int,
            barrier: Any, results: Any) -> None:
    """One of the processes of section 4: runs every round, synchronised by ``barrier``."""
    client = counting_client(url, RoundTripCountingConnection)
    batches = make_batches(batch_size, 64, seed=10_000 + index)
    for variant, target in rounds:
        if variant == "ours":
            namespace, env = target.split("|")
            store = StatsStore(client, namespace)
            store.merge(env + "-warm", RunningStats.from_values(batches[0]))  # FCALL fallback, script load
            run = _ours_normalizer(SharedRewardNormalizer(env, store, mode="zscore"))
        else:
            run = _watch_normalizer(client, target)
            _watch_normalizer(client, target + "-warm")(batches[0])
        gc.collect()
        barrier.wait()
        reset_counts()
        retries = 0
        start = time.perf_counter()
        for i in range(calls):
            retries += run(batches[i % len(batches)])[1]
        end = time.perf_counter()
        results.put({"index": index, "variant": variant, "start": start, "end": end, "calls": calls,
                     "retries": retries, "round_trips": COUNTS["sends"]})
    client.close()


def section_processes(out: Printer, client: redis.Redis, url: str, ns: str, plan: Plan) -> None:
    progress(f"section 4: {plan.procs} processes, ours vs WATCH/MULTI")
    out.heading(f"4. {plan.procs} processes normalizing into one env (batch 16): "
                "merge script vs WATCH/MULTI")
    batch_size = 16
    rounds: list[tuple[str, str]] = []
    for r in range(plan.proc_rounds):
        rounds.append(("ours", f"{ns}|procs-ours-{r}"))
        rounds.append(("watch", f"{ns}:procs-watch-{r}"))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(plan.procs + 1)
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(i, url, rounds, plan.proc_calls, batch_size,
                                                     barrier, results), daemon=True)
               for i in range(plan.procs)]
    for worker in workers:
        worker.start()
    store = StatsStore(client, ns)
    expected = plan.procs * plan.proc_calls * batch_size
    per_round = []
    try:
        for variant, target in rounds:
            barrier.wait(timeout=120)
            done = [results.get(timeout=600) for _ in workers]
            elapsed = max(d["end"] for d in done) - min(d["start"] for d in done)
            if variant == "ours":
                _, env = target.split("|")
                final = store.get(env).count
            else:
                raw = client.hget(target, "count")
                final = int(raw) if raw is not None else 0
            per_round.append({
                "variant": variant, "rate": sum(d["calls"] for d in done) / elapsed,
                "retries": sum(d["retries"] for d in done),
                "round_trips": sum(d["round_trips"] for d in done),
                "calls": sum(d["calls"] for d in done), "final": final, "elapsed": elapsed,
            })
            progress(f"  {variant}: {per_round[-1]['rate']:,.0f} calls/s, final count {final}")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()

    rows = []
    summary = {}
    for variant, label in (("ours", "merge script (EVALSHA)"), ("watch", "WATCH/HMGET/MULTI..EXEC")):
        mine = [r for r in per_round if r["variant"] == variant]
        rates = [r["rate"] for r in mine]
        calls = sum(r["calls"] for r in mine)
        trips = sum(r["round_trips"] for r in mine) / calls
        retries = sum(r["retries"] for r in mine)
        exact = all(r["final"] == expected for r in mine)
        summary[variant] = statistics.median(rates)
        rows.append([label, " / ".join(fmt_rate(x) for x in rates), fmt_rate(statistics.median(rates)),
                     f"{retries} ({retries / calls:.3f}/call)", f"{trips:.2f}",
                     f"{'exact' if exact else 'WRONG'} ({', '.join(str(r['final']) for r in mine)}; "
                     f"expected {expected})"])
    out.table(["variant", "aggregate calls/s per round", "median", "WATCH retries",
               "round trips/merge", "final counts"], rows)
    pair_ratios = [o["rate"] / w["rate"] for o, w in zip(per_round[0::2], per_round[1::2])]
    ratio = statistics.median(pair_ratios)
    verdict = "met" if ratio >= GOAL_CONCURRENT else "NOT met"
    out.note(f"ours / WATCH: {ratio:.2f}x (median of per-round-pair ratios "
             f"{', '.join(f'{x:.2f}' for x in pair_ratios)}); goal >= {GOAL_CONCURRENT}x: {verdict}")
    out.note("round trips counted as requests sent (a pipeline is one): ours is one EVALSHA; the "
             "transaction is WATCH, HMGET, then MULTI+HSET+EXEC in one pipeline = 3 per attempt, "
             "retries averaged in")
    out.note(f"{plan.procs} processes x {plan.proc_calls} calls x batch {batch_size}, "
             f"rounds interleaved ours, watch, ours, watch, ...; each process has its own client")
    out.note(f"both are bounded by the clients' CPU on this {nproc()}-core machine (the {plan.procs} "
             "Python processes and redis-server share the cores); the gap widens with network "
             "latency, which the transaction pays 3 times per merge (more on retries) and ours once")
    out.flush()


# ---- section 5: numerics -----------------------------------------------------------------


def section_variance(out: Printer, client: redis.Redis, ns: str, plan: Plan, reference_path: Path) -> None:
    progress("section 5: variance error at offset 1e6")
    out.heading("5. variance error at offset 1e6: HINCRBYFLOAT sum/sum-of-squares vs merge script")
    rng = random.Random(20240607)
    batches = [[rng.gauss(1e6, 1.0) for _ in range(16)] for _ in range(plan.var_batches)]
    values = [v for batch in batches for v in batch]
    n = len(values)
    mean = math.fsum(values) / n
    exact = math.fsum((v - mean) ** 2 for v in values) / n

    key = f"{ns}:var-shortcut"
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.hincrby(key, "n", len(batch))
        pipe.hincrbyfloat(key, "sum", sum(batch))
        pipe.hincrbyfloat(key, "sumsq", sum(v * v for v in batch))
        if len(pipe) >= 300:
            pipe.execute()
    pipe.execute()
    raw_n, raw_sum, raw_sumsq = client.hmget(key, ["n", "sum", "sumsq"])
    count, total, total_sq = int(raw_n), float(raw_sum), float(raw_sumsq)
    shortcut = total_sq / count - (total / count) ** 2

    store = StatsStore(client, ns)
    stats = None
    for batch in batches:
        stats = store.update("var-ours", batch)
    ours = stats.variance

    rows = [
        ["two-pass math.fsum (truth)", n, f"{exact:.12f}", "-"],
        ["HINCRBYFLOAT n/sum/sumsq, sumsq/n - (sum/n)^2", count, f"{shortcut:.12f}",
         f"{abs(shortcut - exact) / exact:.2e}"],
        ["ours: StatsStore.update (merge script)", stats.count, f"{ours:.12f}",
         f"{abs(ours - exact) / exact:.2e}"],
    ]
    if reference_path.is_file():
        reference = load_reference(reference_path)
        welford = reference.WelfordAccumulator()
        for batch in batches:
            welford.update_batch(batch)
        rows.append(["(reference in-process Welford, for context)", welford.count, f"{welford.variance:.12f}",
                     f"{abs(welford.variance - exact) / exact:.2e}"])
    out.table(["method", "count", "variance", "relative error"], rows)
    out.note(f"{plan.var_batches} batches of 16 values from N(1e6, 1), seed 20240607; "
             "the shortcut's client sums each batch with sum() before HINCRBYFLOAT")
    out.note(f"the shortcut subtracts two numbers near mean^2 = {mean * mean:.3g}, so its variance is a "
             f"multiple of ulp(mean^2) = {math.ulp(mean * mean):.2g} at best; its error grows with "
             "offset^2 / variance (useless by offset ~1e8), while ours stays near 1e-11")
    out.flush()


def _usec_per_call(func: Callable[[], Any], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` loops of ``calls`` calls, in microseconds per call (the best loop is
    the one least disturbed by the other processes on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _call in range(calls):
            func()
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / calls


def _profile_groups(client: redis.Redis, normalizer: SharedRewardNormalizer, batches: list[list[float]],
                    calls: int) -> dict[str, float]:
    """cProfile of ``calls`` real normalize calls, own time (tottime) per call summed by where
    the code lives: this library, redis-py, the socket (waiting for the reply: the server and
    the kernel) and the rest (stdlib, numpy, the interpreter's builtins)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for i in range(calls):
        normalizer.normalize(batches[i % len(batches)])
    profile.disable()
    groups = {"shared_rewardnorm": 0.0, "redis-py": 0.0, "socket (waiting for the reply)": 0.0, "other": 0.0}
    for (filename, _line, function), row in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        if "shared_rewardnorm" in filename:
            groups["shared_rewardnorm"] += tottime
        elif "/redis/" in filename:
            groups["redis-py"] += tottime
        elif any(word in function for word in ("recv", "select", "poll")):
            groups["socket (waiting for the reply)"] += tottime
        else:
            groups["other"] += tottime
    return {name: 1e6 * seconds / calls for name, seconds in groups.items()}


def _client_stage_rows(client: redis.Redis, ns: str, size: int, loops: int) -> list[list[str]]:
    """Section 7's rows for one batch size: each stage timed alone, then the cProfile groups."""
    from shared_rewardnorm._core.inputs import coerce_scores
    from shared_rewardnorm._core.normalization import normalize_values
    from shared_rewardnorm._core.protocol import decode_reply
    from shared_rewardnorm.stats import summarize

    rows = []
    normalizer = SharedRewardNormalizer(f"profile-b{size}", client, mode="zscore", namespace=ns)
    store_core = normalizer.store
    batch = make_batches(size, 1, seed=700 + size)[0]
    for _ in range(20):  # past warmup, so normalization takes its real path
        normalizer.normalize(batch)
    key = store_core.key(f"profile-b{size}")
    captured = capture_script_calls(client, lambda: normalizer.normalize(batch))
    method, target, numkeys, keys_and_args = captured[0]
    # A reply of the merge as normalize gets it, from a batch record of its own.
    reply = getattr(client, method)(target, numkeys, keys_and_args[0], batch_record_key(key, "canned"),
                                    keys_and_args[2], encode_sequence(1), keys_and_args[4])
    values = coerce_scores(batch)
    stats = summarize(values)
    info, _outcome = decode_reply(reply)
    settings = normalizer._settings

    def driven() -> Any:
        operation = normalizer._normalize_op(batch)
        next(operation)
        try:
            operation.send(reply)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("normalize sent more than one request")

    connection = client.connection_pool.get_connection()
    try:
        stages = [
            ("validation (coerce_scores)", lambda: coerce_scores(batch)),
            ("summary (summarize)", lambda: summarize(values)),
            ("encoding (encode_stats + the merge request)",
             lambda: store_core._merge_request(key, encode_stats(stats))),
            ("reply parsing (decode_reply)", lambda: decode_reply(reply)),
            ("normalization (normalize_values)", lambda: normalize_values(values, info.stats, settings)),
            ("the whole operation, driven with a canned reply", driven),
            ("redis-py: pack the EVALSHA command",
             lambda: connection.pack_command(method.upper(), target, numkeys, *keys_and_args)),
        ]
    finally:
        client.connection_pool.release(connection)
    for label, func in stages:
        func()
        rows.append([f"batch {size}", label, f"{_usec_per_call(func, loops):.1f}"])
    for label, usec in _profile_groups(client, normalizer, make_batches(size, 64, seed=710 + size),
                                       max(200, loops // 4)).items():
        rows.append([f"batch {size}", f"cProfile of real calls: {label}", f"{usec:.1f}"])
    return rows


def section_client_profile(out: Printer, client: redis.Redis, ns: str, plan: Plan) -> None:
    """Where the client's time per normalize call goes: each stage of the library timed alone
    with the network stubbed out (the operation driven with a canned reply), redis-py's own
    work, and a cProfile of real calls grouped by module."""
    progress("section 7: client time per normalize call, by stage")
    out.heading("7. Client time per normalize call, by stage (network stubbed; best of 5 loops)")
    loops = 2000 if plan is FULL else 300
    rows = [row for size in (16, 256) for row in _client_stage_rows(client, ns, size, loops)]
    out.table(["batch", "stage", "us per call"], rows)
    out.note("each stage alone in a loop, no network; 'the whole operation' is what normalize runs besides "
             "redis-py and the socket (its sum of stages plus the generator's hand-over)")
    out.note("cProfile rows: own time per call of real normalize calls, grouped by module; the profiler adds "
             "its own overhead to every Python call, so they show shares, not absolute cost")
    out.flush()



# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def section_parser(out: Printer, url: str, ns: str, plan: Plan) -> None:
    progress("section 6: hiredis vs the pure-Python reply parser")
    out.heading("6. redis-py's reply parser: hiredis vs pure Python (same server, interleaved)")
    try:
        import hiredis  # noqa: F401
        from redis._parsers import _HiredisParser, _RESP2Parser
    except ImportError:
        out.note("skipped: hiredis is not installed (pip install hiredis)")
        return
    clients = {name: redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, parser_class=parser))
               for name, parser in (("hiredis", _HiredisParser), ("python", _RESP2Parser))}
    rows = []
    try:
        calls: list[tuple[str, dict[str, Callable[[Any], Any]], list[Any]]] = [
            ("PING", {name: (lambda _item, c=c: c.ping()) for name, c in clients.items()}, [None])]
        for size in (16, 256):
            calls.append((f"normalize, batch {size}",
                          {name: SharedRewardNormalizer(f"parser-b{size}", c, namespace=ns).normalize
                           for name, c in clients.items()},
                          make_batches(size, 64, seed=600 + size)))
        for label, funcs, items in calls:
            for item in (items * 20)[:20]:
                funcs["hiredis"](item)
                funcs["python"](item)
            result = interleave(funcs["hiredis"], items, funcs["python"], items, plan.ping_chunks, plan.ping_calls)
            low, mid, high = quartiles(result.ratios())
            rows.append([label, f"{1e6 / result.a_rate:.0f}", f"{1e6 / result.b_rate:.0f}", fmt_ratio(mid),
                         f"{low:.2f}-{high:.2f}"])
    finally:
        for client in clients.values():
            client.close()
    out.table(["call", "us/call with hiredis", "us/call pure Python", "hiredis speed-up (median of chunks)",
               "p25-p75"], rows)
    out.note("speed-up = pure-Python time / hiredis time per chunk; redis-py picks hiredis by itself when it is "
             "installed (pip install hiredis)")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, quick="a short run (fewer, shorter chunks)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help=f"the reference reward_normalization.py (default {DEFAULT_REFERENCE})")
    parser.add_argument("--sections", default="1,2,3,4,5,6,7",
                        help="comma-separated sections to run (default: all)")
    args = parser.parse_args(argv)
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    plan = QUICK if args.quick else FULL
    out = Printer(args.markdown)

    client = redis.Redis.from_url(args.url)
    client.ping()
    with scratch_namespace(client) as ns:
        section_machine(out, client, args.url, plan, args.quick)
        if 1 in sections:
            section_ping(out, client, ns, plan)
        if 2 in sections:
            section_reference(out, client, ns, plan, args.reference)
        if 3 in sections:
            section_bytes(out, args.url, ns, plan)
        if 4 in sections:
            section_processes(out, client, args.url, ns, plan)
        if 5 in sections:
            section_variance(out, client, ns, plan, args.reference)
        if 6 in sections:
            section_parser(out, args.url, ns, plan)
        if 7 in sections:
            section_client_profile(out, client, ns, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
