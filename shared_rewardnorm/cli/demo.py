"""``shared-rewardnorm demo``: worker processes normalize three differently scaled rewards
through one shared store, and the demo checks that they all ended up with the same view.

The library's promise is that replicas in different processes (on different machines) share one
consistent set of statistics. A single-process example cannot show that, so the demo runs real
worker processes (``spawn``: nothing inherited, as on another machine) talking over TCP, by
default to an embedded Redis-protocol server (fakeredis with Lua, served from a thread of this
process) so that it works with nothing installed; ``url=`` runs the same against a real server.

Each worker plays one env (worker ``i`` plays ``DEMO_ENVS[i % 3]``, so the default six workers
are two replicas per env) and normalizes its batches with ``SharedRewardNormalizer``. Workers
send the parent every raw value and every normalized value, so the parent can recompute exactly
what the store should hold. After every write has finished (a second phase, started by the
parent), each replica reads the store once more; the checks are that replicas of an env read
identical statistics, that the store counted every value sent, and that its mean is the exact
mean of everything sent.

``run_demo(DemoConfig(...))`` returns a ``DemoResult`` and prints nothing (the CLI renders it),
so tests and notebooks can drive the demo directly.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_rewardnorm._core.keys import glob_escape
from shared_rewardnorm._redis.connection import close_client
from shared_rewardnorm.stats import RunningStats
from shared_rewardnorm.sync import SharedRewardNormalizer, StatsStore

__all__ = [
    "DEMO_ENVS",
    "Check",
    "DemoConfig",
    "DemoEnv",
    "DemoError",
    "DemoObserver",
    "DemoResult",
    "EnvOutcome",
    "plot_histograms",
    "require_matplotlib",
    "run_demo",
]

#: Largest allowed |stored mean - exact mean of everything sent|.
MEAN_TOLERANCE = 1e-9
#: A phase that receives no message from any worker for this long has failed (a hung server or
#: worker); workers give up waiting for the parent after the same time.
STALL_TIMEOUT = 120.0
#: How often the parent wakes up to check that its workers are still alive.
_POLL_SECONDS = 0.25
_LOOPBACK = "127.0.0.1"  # the embedded server is for this machine's processes only
_PLOT_HINT = "--plot needs matplotlib: pip install 'shared-rewardnorm[plot]'"


class DemoError(Exception):
    """The demo could not run (a worker failed, the namespace is in use, matplotlib is missing)."""


def _gsm8k_rewards(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.where(rng.random(size) < 0.6, 1.0, -1.0)


def _tool_use_rewards(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.beta(2.0, 5.0, size)


def _code_rewards(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.binomial(100, 0.35, size).astype(np.float64)


@dataclass(frozen=True)
class DemoEnv:
    """An environment the demo plays: its name, its reward scale in words, and a sampler
    (module-level, so a spawned worker can unpickle it)."""

    name: str
    rewards: str
    sample: Callable[[np.random.Generator, int], np.ndarray]


#: Three reward scales that no single fixed normalization would suit, which is the point.
DEMO_ENVS: tuple[DemoEnv, ...] = (
    DemoEnv("gsm8k", "{-1, 1}: correct with p=0.6", _gsm8k_rewards),
    DemoEnv("tool_use", "[0, 1]: Beta(2, 5)", _tool_use_rewards),
    DemoEnv("code", "tests passed of 100: Bin(100, 0.35)", _code_rewards),
)


@dataclass(frozen=True)
class DemoConfig:
    """What to run. ``url=None`` starts the embedded server; ``namespace=None`` picks a random
    one, so a demo never meets statistics it did not write."""

    workers: int = 6
    batches: int = 200
    batch_size: int = 16
    seed: int = 0
    warmup: int = 10
    url: str | None = None
    cluster: bool = False
    namespace: str | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if self.workers < len(DEMO_ENVS):
            raise ValueError(f"workers must be at least {len(DEMO_ENVS)} (one per env), got {self.workers}")
        for name in ("batches", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.url is None and (self.cluster or self.keep):
            raise ValueError("cluster and keep need a url: the embedded server is neither a cluster "
                             "nor kept after the demo")

    @property
    def total_batches(self) -> int:
        """Normalize calls the whole demo makes."""
        return self.workers * self.batches


class DemoObserver:
    """Hooks for showing a running demo; the defaults do nothing."""

    def started(self, url: str, namespace: str, embedded: bool) -> None:
        """The server is up and the workers are about to be spawned."""

    def workers_ready(self, ready: int, total: int) -> None:
        """``ready`` of ``total`` worker processes are up (called once with 0 as they are
        spawned, then once per worker: starting Python and numpy takes a few seconds)."""

    def progress(self, done: int, total: int, elapsed: float) -> None:
        """``done`` of ``total`` batches normalized, ``elapsed`` seconds after the start signal."""


@dataclass(frozen=True)
class _WorkerTask:
    """Everything a spawned worker needs (picklable)."""

    index: int
    env: DemoEnv
    replica: int
    url: str
    cluster: bool
    namespace: str
    batches: int
    batch_size: int
    seed: int
    warmup: int

    @property
    def label(self) -> str:
        return f"{self.env.name}#{self.replica}"


@dataclass
class _WorkerLog:
    """What the parent has heard from one worker."""

    task: _WorkerTask
    ready: bool = False
    raw: list[float] = field(default_factory=list)
    normalized: list[float] = field(default_factory=list)
    final: RunningStats | None = None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation, two passes (``RunningStats.from_values``)."""
    stats = RunningStats.from_values(values)
    return stats.mean, stats.std


@dataclass(frozen=True)
class EnvOutcome:
    """One env after the demo: every value its replicas sent and received, what the store holds,
    and what each replica read in the final phase."""

    env: DemoEnv
    raw: tuple[float, ...]
    normalized: tuple[float, ...]
    stored: RunningStats
    replica_views: tuple[RunningStats, ...]

    @property
    def count(self) -> int:
        """Values sent to the store."""
        return len(self.raw)

    @property
    def raw_mean_std(self) -> tuple[float, float]:
        """Mean and std of the raw rewards sent."""
        return mean_std(self.raw)

    @property
    def normalized_mean_std(self) -> tuple[float, float]:
        """Mean and std of the normalized rewards the replicas received."""
        return mean_std(self.normalized)


@dataclass(frozen=True)
class Check:
    """One verdict of the demo."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class DemoResult:
    """The outcome of ``run_demo``. ``url`` is the server used (an embedded one is gone by the
    time ``run_demo`` returns); ``elapsed`` covers the normalize phase only, not spawning."""

    url: str
    embedded: bool
    namespace: str
    workers: int
    calls: int
    elapsed: float
    envs: tuple[EnvOutcome, ...]
    checks: tuple[Check, ...]
    kept: bool

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def calls_per_second(self) -> float:
        """Normalize calls per second over the whole fleet."""
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0


# --- the worker process -------------------------------------------------------------------------


def _await(event: Any, what: str) -> None:
    if not event.wait(STALL_TIMEOUT):
        raise TimeoutError(f"no {what} signal from the demo process after {STALL_TIMEOUT:g} s")


def _play(task: _WorkerTask, messages: Any, start: Any, read_phase: Any) -> None:
    store = StatsStore(task.url, task.namespace, cluster=task.cluster)
    try:
        norm = SharedRewardNormalizer(task.env.name, store, warmup=task.warmup)
        norm.refresh()  # connect now, so the timed phase measures normalize calls only
        messages.put(("ready", task.index, None))
        _await(start, "start")
        rng = np.random.default_rng([task.seed, task.index])
        for _ in range(task.batches):
            raw = task.env.sample(rng, task.batch_size).tolist()
            messages.put(("batch", task.index, (raw, norm.normalize(raw))))
        _await(read_phase, "read")  # every worker's writes are done: read the final view
        messages.put(("final", task.index, norm.refresh()))
    finally:
        close_client(store.client)


def _worker_main(task: _WorkerTask, messages: Any, start: Any, read_phase: Any) -> None:
    """Entry point of a worker process: play, and report a failure as one message rather than
    a traceback on the demo's terminal."""
    try:
        _play(task, messages, start, read_phase)
    except Exception as exc:
        messages.put(("error", task.index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


# --- the parent ---------------------------------------------------------------------------------


@contextmanager
def _embedded_server() -> Iterator[str]:
    """A fakeredis Redis-protocol server on a free loopback port, served from a daemon thread;
    yields its URL. Port 0 lets the OS pick the port, so no other process can take it first."""
    import fakeredis

    server = fakeredis.TcpFakeServer((_LOOPBACK, 0), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="demo-embedded-redis", daemon=True)
    thread.start()
    try:
        yield f"redis://{_LOOPBACK}:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def _server(config: DemoConfig) -> Iterator[str]:
    if config.url is not None:
        yield config.url
    else:
        with _embedded_server() as url:
            yield url


def _tasks(config: DemoConfig, url: str, namespace: str) -> list[_WorkerTask]:
    return [_WorkerTask(index=i, env=DEMO_ENVS[i % len(DEMO_ENVS)], replica=i // len(DEMO_ENVS), url=url,
                        cluster=config.cluster, namespace=namespace, batches=config.batches,
                        batch_size=config.batch_size, seed=config.seed, warmup=config.warmup)
            for i in range(config.workers)]


@contextmanager
def _children_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside inherit an ignored SIGINT (an ignored signal survives exec).

    Ctrl-C goes to the terminal's whole process group; this way only the parent hears it and
    stops the workers itself, instead of every worker printing a KeyboardInterrupt traceback
    from wherever it was (often the middle of its imports). Signals can only be set from the
    main thread; elsewhere workers keep the default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Fleet:
    """The worker processes, their message queue and the two phase signals."""

    def __init__(self, tasks: list[_WorkerTask]) -> None:
        context = multiprocessing.get_context("spawn")
        self.messages = context.Queue()
        self.start = context.Event()
        self.read_phase = context.Event()
        self.logs = [_WorkerLog(task) for task in tasks]
        self.processes = [context.Process(target=_worker_main, name=f"demo-{task.label}", daemon=True,
                                          args=(task, self.messages, self.start, self.read_phase))
                          for task in tasks]

    def launch(self) -> None:
        with _children_ignore_ctrl_c():
            for process in self.processes:
                process.start()

    def receive_until(self, done: Callable[[], bool], on_message: Callable[[str], None] = lambda kind: None) -> None:
        """Handle worker messages until ``done()``; raise ``DemoError`` if a worker fails or
        nothing arrives for ``STALL_TIMEOUT`` seconds."""
        last_message = time.monotonic()
        while not done():
            try:
                kind, index, payload = self.messages.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                self._check_alive()
                if time.monotonic() - last_message > STALL_TIMEOUT:
                    raise DemoError(f"no word from any worker for {STALL_TIMEOUT:g} s") from None
                continue
            last_message = time.monotonic()
            self._handle(kind, self.logs[index], payload)
            on_message(kind)

    def _handle(self, kind: str, log: _WorkerLog, payload: Any) -> None:
        if kind == "error":
            raise DemoError(f"worker {log.task.label} failed: {payload}")
        if kind == "ready":
            log.ready = True
        elif kind == "batch":
            raw, normalized = payload
            log.raw.extend(raw)
            log.normalized.extend(normalized)
        elif kind == "final":
            log.final = payload

    def _check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.exitcode not in (None, 0):
                raise DemoError(f"worker {log.task.label} exited with code {process.exitcode}")

    def stop(self, grace: float) -> None:
        """Reap every worker, terminating the ones still running after ``grace`` seconds
        (0 after a failure: the others would only wait for signals that will not come)."""
        deadline = time.monotonic() + grace
        for process in self.processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()
        self.messages.close()
        self.messages.join_thread()


def _run_fleet(config: DemoConfig, tasks: list[_WorkerTask], observer: DemoObserver) -> tuple[list[_WorkerLog], float]:
    """Spawn the workers, start them together, collect everything, then run the read phase."""
    fleet = _Fleet(tasks)
    total = config.total_batches
    done = 0
    began = time.perf_counter()

    def counted(kind: str) -> None:
        nonlocal done
        if kind == "batch":
            done += 1
            observer.progress(done, total, time.perf_counter() - began)

    def ready(kind: str) -> None:
        if kind == "ready":
            observer.workers_ready(sum(log.ready for log in fleet.logs), len(fleet.logs))

    try:
        observer.workers_ready(0, len(fleet.logs))
        fleet.launch()
        fleet.receive_until(lambda: all(log.ready for log in fleet.logs), ready)
        fleet.start.set()
        began = time.perf_counter()
        fleet.receive_until(lambda: done == total, counted)
        elapsed = time.perf_counter() - began
        fleet.read_phase.set()
        fleet.receive_until(lambda: all(log.final is not None for log in fleet.logs))
    except BaseException:
        fleet.stop(grace=0)
        raise
    fleet.stop(grace=10)  # each worker has sent its last message and is exiting
    return fleet.logs, elapsed


def _outcomes(logs: list[_WorkerLog], stored: dict[str, RunningStats]) -> tuple[EnvOutcome, ...]:
    outcomes = []
    for env in DEMO_ENVS:
        mine = [log for log in logs if log.task.env == env]
        outcomes.append(EnvOutcome(
            env=env,
            raw=tuple(value for log in mine for value in log.raw),
            normalized=tuple(value for log in mine for value in log.normalized),
            stored=stored[env.name],
            replica_views=tuple(log.final for log in mine if log.final is not None),
        ))
    return tuple(outcomes)


def _check_replicas(outcomes: Sequence[EnvOutcome]) -> Check:
    differing = [o.env.name for o in outcomes if any(view != o.stored for view in o.replica_views)]
    replicas = sum(len(o.replica_views) for o in outcomes)
    if differing:
        return Check("replicas agree", False, f"replicas of {', '.join(differing)} read different statistics")
    return Check("replicas agree", True, f"all {replicas} replicas read identical statistics after all writes")


def _check_counts(outcomes: Sequence[EnvOutcome]) -> Check:
    parts = [f"{o.env.name} {o.stored.count}/{o.count}" for o in outcomes]
    passed = all(o.stored.count == o.count for o in outcomes)
    return Check("counts", passed, "stored/sent: " + ", ".join(parts))


def _check_means(outcomes: Sequence[EnvOutcome]) -> Check:
    errors = {o.env.name: abs(o.stored.mean - o.raw_mean_std[0]) for o in outcomes}
    worst = max(errors, key=errors.__getitem__)
    passed = all(error <= MEAN_TOLERANCE for error in errors.values())
    return Check("means", passed, f"largest |stored mean - exact mean of everything sent| = "
                                  f"{errors[worst]:.3g} ({worst}); tolerance {MEAN_TOLERANCE:g}")


def _drop_keys(store: StatsStore, envs: Sequence[str]) -> None:
    """Delete every key of the demo's envs: the stats hashes and whatever the library keeps next
    to them under the same hash tag (``<namespace>:{<env>}:...``, e.g. batch records)."""
    for env in envs:
        key = store.key(env)
        found = list(store.client.scan_iter(match=glob_escape(key) + "*", count=1000))
        if found:
            store.client.delete(*found)  # one hash tag, so one slot: a single DEL even on a cluster


def _require_fresh(store: StatsStore) -> None:
    """Refuse a namespace that already holds the demo envs: the checks compare the store with
    what this run sent, and the cleanup must never delete statistics the demo did not write."""
    taken = [env for env, stats in store.get_many(env.name for env in DEMO_ENVS).items() if not stats.is_empty]
    if taken:
        raise DemoError(f"namespace {store.namespace!r} already holds statistics for {', '.join(taken)}; "
                        "choose another --namespace (or leave it out for a random one)")


def run_demo(config: DemoConfig, observer: DemoObserver | None = None) -> DemoResult:
    """Run the demo and check it; prints nothing (see ``DemoObserver`` for live progress).

    Raises ``DemoError`` if it cannot run to the end; failed checks are reported in the result.
    """
    observer = observer or DemoObserver()
    namespace = config.namespace or f"rewardnorm-demo-{uuid.uuid4().hex[:10]}"
    names = [env.name for env in DEMO_ENVS]
    with _server(config) as url:
        store = StatsStore(url, namespace, cluster=config.cluster)
        try:
            _require_fresh(store)
            observer.started(url, namespace, config.url is None)
            try:
                logs, elapsed = _run_fleet(config, _tasks(config, url, namespace), observer)
                outcomes = _outcomes(logs, store.get_many(names))
            finally:
                if config.url is not None and not config.keep:
                    _drop_keys(store, names)
        finally:
            close_client(store.client)
    checks = (_check_replicas(outcomes), _check_counts(outcomes), _check_means(outcomes))
    return DemoResult(url=url, embedded=config.url is None, namespace=namespace, workers=config.workers,
                      calls=config.total_batches, elapsed=elapsed, envs=outcomes, checks=checks,
                      kept=config.keep)


# --- the plot -----------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Check that matplotlib (an optional extra) and its Agg backend import, or raise
    ``DemoError`` saying how to install it; the CLI calls this before a run, not after it."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
    except ImportError:
        raise DemoError(_PLOT_HINT) from None


def _bins(values: Sequence[float]) -> Any:
    """One bin per integer for integer rewards (pass counts, +/-1), where 50 equal bins would
    leave empty gaps between the integers; 50 bins otherwise."""
    array = np.asarray(values)
    if array.size and np.all(array == np.round(array)) and array.max() - array.min() <= 200:
        return np.arange(array.min() - 0.5, array.max() + 1.5)
    return 50


def plot_histograms(result: DemoResult, path: str | Path) -> Path:
    """Raw and normalized reward histograms, one row per env, written as an image (Agg: no
    display needed). Returns the path written."""
    target = Path(path)
    histogram_figure(result).savefig(target, dpi=100)
    return target


def histogram_figure(result: DemoResult) -> Any:
    """The matplotlib ``Figure`` of ``plot_histograms``: axes labelled, a title per panel."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3 * len(result.envs)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(result.envs), 2, squeeze=False)
    for row, outcome in zip(axes, result.envs, strict=True):
        panels = ((row[0], outcome.raw, "tab:blue", f"{outcome.env.name}: raw, {outcome.env.rewards}", "raw reward"),
                  (row[1], outcome.normalized, "tab:orange", f"{outcome.env.name}: normalized (z-score)",
                   "normalized reward (z-score)"))
        for ax, values, color, title, xlabel in panels:
            mean, std = mean_std(values)
            ax.hist(values, bins=_bins(values), color=color)
            ax.set_title(f"{title}\nmean {mean:.3g}, std {std:.3g}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("rewards in the bin")
    figure.suptitle(f"shared-rewardnorm demo: {result.workers} workers, {result.calls} batches")
    return figure
