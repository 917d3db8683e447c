"""``shared-rewardnorm``: look at, back up and restore the shared statistics from a shell, and
run the demo.

Connection options go before the subcommand (``shared-rewardnorm --url URL stats``), and are
accepted after it too (``shared-rewardnorm demo --url URL``). Every failure
is reported as one ``shared-rewardnorm: error: ...`` line on stderr with exit code 1 (2 for
usage errors), never a traceback: the people running this are operators looking at a trainer's
Redis, and a stack trace tells them less than the sentence it buries.

``main(argv)`` returns the exit code, so tests call it in process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias, cast

import redis
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError

from shared_rewardnorm._core.formats import parse_snapshot, snapshot_of
from shared_rewardnorm._redis.connection import URL_VARIABLE, close_client, resolve_client, url_from_environment
from shared_rewardnorm._redis.scripts import OPERATIONS, function_library, script_source
from shared_rewardnorm.cli.bgsave import snapshot_masters
from shared_rewardnorm.cli.demo import (
    DemoConfig,
    DemoError,
    plot_histograms,
    require_matplotlib,
    run_demo,
)
from shared_rewardnorm.cli.prompts import add_prompt_commands
from shared_rewardnorm.cli.render import (
    ProgressLine,
    demo_report,
    format_table,
    redact,
    render_stats,
    stats_json,
)
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.errors import RewardNormError, StoreUnavailableError
from shared_rewardnorm.retry import RetryPolicy
from shared_rewardnorm.sync import StatsStore

__all__ = ["build_parser", "main"]

PROG = "shared-rewardnorm"
DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_NAMESPACE = "rewardnorm"
#: A CLI must not hang for the OS's two-minute TCP timeout on an unreachable host.
CONNECT_TIMEOUT = 10.0
SOCKET_TIMEOUT = 30.0
#: An operator at a shell would rather hear at once that the server is down than wait out the
#: library's patient default (meant for trainers riding out a failover); one quick retry still
#: covers a dropped connection.
CLI_RETRY = RetryPolicy(attempts=3, base=0.1, cap=0.5)
_CLEAR_SCREEN = "\033[H\033[2J"


#: What ``ArgumentParser.add_subparsers`` returns (argparse names the class privately).
_Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """A command used wrongly (exit code 2), e.g. ``reset`` without ``--yes``."""


class CommandFailed(Exception):
    """A command ran to the end, but what it reports is a failure (exit code 1)."""


#: Errors that are the world's fault (server, files, input), reported as one line.
_FAILURES = (redis.RedisError, RedisClusterException, RewardNormError, DemoError, CommandFailed, ValueError,
             TypeError, OSError)


# --- small helpers ------------------------------------------------------------------------------


# --- connecting ---------------------------------------------------------------------------------


def _url(args: argparse.Namespace) -> str:
    """``--url``, else ``$SHARED_REWARDNORM_URL``, else the default. The variable follows the
    library's rule (``url_from_environment``): set but blank or malformed is a usage error,
    never a reason to fall back to localhost, whose statistics a ``reset`` would then delete."""
    given: str | None = args.url
    if given is not None:
        return given
    try:
        from_environment = url_from_environment(args.cluster)
    except ValueError as exc:
        raise UsageError(f"{exc} (unset, the default is {DEFAULT_URL})") from None
    return from_environment or DEFAULT_URL


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[StatsStore]:
    """The store the global options name, with connect and read timeouts (redis-py's defaults
    wait forever); its connections are closed afterwards."""
    client = resolve_client(_url(args), cluster=args.cluster, socket_connect_timeout=CONNECT_TIMEOUT,
                            socket_timeout=SOCKET_TIMEOUT)
    try:
        yield StatsStore(client, DEFAULT_NAMESPACE if args.namespace is None else args.namespace, retry=CLI_RETRY)
    finally:
        close_client(client)


# --- stats and watch ----------------------------------------------------------------------------


def read_stats(store: StatsStore, envs: Sequence[str]) -> tuple[dict[str, EnvInfo], list[str]]:
    """The statistics to show (of the named envs, or of every env in the namespace), and one
    problem per env that could not be shown: a corrupt hash or a key of another type (which
    hides no other env), or a named env with no statistics."""
    found, broken = store.survey(envs or None)
    problems = [f"env {env!r}: {broken[env]}" for env in sorted(broken)]
    for env in dict.fromkeys(envs):
        if env in found and found[env].is_empty:
            del found[env]
            problems.append(f"env {env!r} has no statistics in namespace {store.namespace!r} "
                            f"({store.key(env)} does not exist)")
    return found, problems


def report_problems(problems: Sequence[str]) -> int:
    """Print each problem as an error line on stderr; the exit code (1 if there were any)."""
    for problem in problems:
        _fail(problem)
    return 1 if problems else 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the statistics once; exit 1 if an env could not be shown (each one is named)."""
    with open_store(args) as store:
        found, problems = read_stats(store, args.envs)
        if args.json:
            print(json.dumps(stats_json(store.namespace, found), indent=2, allow_nan=False))
        elif found or not problems:
            print(render_stats(store, found, problems))
    return report_problems(problems)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print the statistics every ``--interval`` seconds until Ctrl-C (or ``--iterations``);
    envs that cannot be shown are named under the table, and the exit code is 1 if the last
    refresh had any."""
    clear = sys.stdout.isatty()
    refreshes = 0
    problems: list[str] = []
    with open_store(args) as store:
        try:
            while True:
                found, problems = read_stats(store, args.envs)
                table = "\n".join([render_stats(store, found, problems),
                                   *(f"error: {problem}" for problem in problems)]).strip("\n")
                stamp = datetime.now().astimezone().isoformat(timespec="seconds")
                sys.stdout.write(_CLEAR_SCREEN if clear else "")
                print(f"{redact(_url(args))} namespace {store.namespace!r} at {stamp} "
                      f"(every {args.interval:g} s; Ctrl-C to stop)\n{table}\n", flush=True)
                refreshes += 1
                if args.iterations is not None and refreshes >= args.iterations:
                    break
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 1 if problems else 0


# --- export and import --------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Write a JSON snapshot of every env in the namespace that can be read; an env that
    cannot (corrupt, or another type) is left out, named, and makes the exit code 1. An
    existing file is replaced by a snapshot of zero envs only with ``--force`` (a mistyped
    namespace must not overwrite a good backup), and the file is written atomically."""
    with open_store(args) as store:
        found, broken = store.survey()
        snapshot = snapshot_of(store.namespace, found)
    problems = [f"env {env!r} left out of the snapshot: {broken[env]}" for env in sorted(broken)]
    text = json.dumps(snapshot, indent=2, allow_nan=False) + "\n"  # read fully before creating the file
    if args.file == "-":
        sys.stdout.write(text)
        return report_problems(problems)
    target = Path(args.file)
    if not snapshot["envs"] and target.exists() and not args.force:
        raise CommandFailed(f"namespace {snapshot['namespace']!r} has no envs to export: refusing to replace "
                            f"{args.file} with an empty snapshot (a mistyped --namespace?); add --force to write it")
    write_atomically(target, text)
    print(f"exported {len(snapshot['envs'])} envs of namespace {snapshot['namespace']!r} to {args.file}",
          file=sys.stderr)
    return report_problems(problems)


def write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target`` and rename it over ``target``, so an
    interrupted write never leaves half a file; an OS error names the file."""
    temporary = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.resolve().parent,
                                         prefix=f".{target.name}.", suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise CommandFailed(f"cannot write {target}: {exc.strerror or exc}") from None


def load_snapshot_file(path: str) -> dict[str, Any]:
    """Read and completely validate a snapshot file, so a bad one is refused before anything is
    written (and before connecting)."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        snapshot = json.loads(text)
    except ValueError as exc:  # bad JSON, or not UTF-8
        raise ValueError(f"{name}: not a JSON snapshot ({exc}); nothing was written") from None
    try:
        parse_snapshot(snapshot)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}; nothing was written") from None
    return cast("dict[str, Any]", snapshot)  # parse_snapshot has checked that it is a JSON object


def cmd_import(args: argparse.Namespace) -> int:
    """Restore a JSON snapshot's envs into the namespace (other envs are untouched)."""
    snapshot = load_snapshot_file(args.file)
    with open_store(args) as store:
        restored = store.restore(snapshot)
        origin = snapshot.get("namespace")
        note = f" (exported from namespace {origin!r})" if origin not in (None, store.namespace) else ""
        print(f"restored {len(restored)} envs into namespace {store.namespace!r}{note}")
    return 0


# --- reset --------------------------------------------------------------------------------------


def _require_existing(store: StatsStore, envs: Sequence[str], create: bool, what: str) -> dict[str, EnvInfo]:
    """Each env's info, after refusing (exit 1, nothing changed) envs with no statistics and no
    configuration unless ``create``: a mistyped name must not create an env."""
    names = list(dict.fromkeys(envs))
    for env in names:  # every name is checked before the first read
        store.key(env)
    infos = store.infos(names)
    missing = [env for env in names if infos[env].is_empty]
    if missing and not create:
        listed = ", ".join(repr(env) for env in missing)
        raise CommandFailed(f"no env {listed} in namespace {store.namespace!r} (nothing stored under "
                            f"{', '.join(store.key(env) for env in missing)}); {what}")
    return infos


def cmd_reset(args: argparse.Namespace) -> int:
    """Delete envs' statistics, which every process of the trainer shares: only with --yes, and
    only envs that exist (a missing one is named, exit 1, and nothing is reset). The
    configuration stays: a half-life, and the frozen flag (a frozen env stays frozen)."""
    if not args.yes:
        raise UsageError(f"reset deletes the shared statistics of {', '.join(args.envs)} for every process "
                         "that uses them; add --yes to confirm")
    with open_store(args) as store:
        infos = _require_existing(store, args.envs, False, "nothing was reset")
        for env, info in infos.items():
            store.reset(env)
            kept = []
            if info.half_life is not None:
                kept.append(f"half-life {info.half_life:g} kept")
            if info.frozen:
                kept.append("still frozen: merges add nothing until `unfreeze`")
            print(f"reset {env} ({store.key(env)}): count {info.stats.count} -> 0"
                  + (f"; {'; '.join(kept)}" if kept else ""))
    return 0


# --- configure, freeze, unfreeze ----------------------------------------------------------------


def cmd_configure(args: argparse.Namespace) -> int:
    """Set or clear an env's half-life (decayed statistics), for every writer; an env that does
    not exist needs --create."""
    half_life = None if args.no_decay else args.half_life
    with open_store(args) as store:
        _require_existing(store, [args.env], args.create, "add --create to configure it anyway")
        changed = store.configure(args.env, half_life=half_life)
    setting = "no decay" if half_life is None else f"half-life {half_life:g} samples"
    if not changed:
        print(f"{args.env}: {setting} (unchanged)")
    elif half_life is None:
        print(f"{args.env}: {setting} (decayed statistics deleted)")
    else:
        print(f"{args.env}: {setting} (decayed statistics start afresh)")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    """Freeze or unfreeze envs: while frozen, no process's merges add anything. Envs that do not
    exist need --create (every name is checked before the first change)."""
    with open_store(args) as store:
        _require_existing(store, args.envs, args.create,
                          f"add --create to {'freeze' if args.frozen else 'unfreeze'} it anyway")
        for env in dict.fromkeys(args.envs):
            changed = store.freeze(env) if args.frozen else store.unfreeze(env)
            state = "frozen" if args.frozen else "unfrozen"
            print(f"{env}: {state}" + ("" if changed else " (already)"))
    return 0


# --- snapshot and Functions ---------------------------------------------------------------------


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Persist the server's data to its RDB file(s) now, and say where."""
    with open_store(args) as store:
        reports = snapshot_masters(store.client, args.timeout)
    rows = [[r.master, r.status, r.saved_at.isoformat(timespec="seconds"), r.path] for r in reports]
    print(format_table(["master", "status", "saved at (LASTSAVE)", "file"], rows, left=4))
    failed = [r.master for r in reports if r.status != "ok"]
    if failed:
        raise CommandFailed(f"the background save failed on {', '.join(failed)} (see the server's log)")
    return 0


def cmd_load_functions(args: argparse.Namespace) -> int:
    """Load the Function library on every master (an administrator's step)."""
    with open_store(args) as store:
        name = store.load_functions()
    print(f"loaded Function library {name}: trainers can now use functions=True (FCALL only)")
    return 0


def cmd_lua(args: argparse.Namespace) -> int:
    """Print an assembled script or the Function library, for redis-cli and other clients."""
    sys.stdout.write(function_library() if args.what == "library" else script_source(args.what))
    return 0


# --- demo ---------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 only if every check passes."""
    try:
        config = DemoConfig(workers=args.workers, batches=args.batches, batch_size=args.batch_size, seed=args.seed,
                            warmup=args.warmup, url=args.url, cluster=args.cluster, namespace=args.namespace,
                            keep=args.keep)
    except ValueError as exc:
        raise UsageError(f"demo: {exc}") from None
    if args.plot:  # fail before the run, not after it
        require_matplotlib()
        if not Path(args.plot).resolve().parent.is_dir():
            raise ValueError(f"--plot {args.plot}: the directory does not exist")
    print(f"{PROG} demo: {config.workers} worker processes, {config.batches} batches of {config.batch_size} "
          f"rewards each, seed {config.seed}", flush=True)
    result = run_demo(config, ProgressLine(sys.stdout))
    print(demo_report(result))
    if args.plot:
        print(f"histograms: {plot_histograms(result, args.plot)}")
    return 0 if result.passed else 1


# --- the parser ---------------------------------------------------------------------------------


def _not_blank(option: str) -> Callable[[str], str]:
    """An argparse type refusing an empty or blank value: ``--namespace "$UNSET"`` must not
    quietly mean the default namespace (and ``reset`` delete its statistics)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{option} must not be empty or blank (an unset shell variable?)")
        return text

    return parse


def _bounded(kind: Callable[[str], Any], minimum: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, finite, at least (or above) ``minimum``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):  # float("nan") and float("inf") parse, and nan passes any bound
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    return parse


def _connection_options(after_command: bool) -> argparse.ArgumentParser:
    """``--url``, ``--cluster`` and ``--namespace``. They belong before the subcommand, and are
    accepted after it too (``demo --url ...`` is what people type); there their defaults are
    SUPPRESS, so leaving them out does not overwrite what was given before the subcommand."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection" + (" (also accepted before the command)" if after_command else ""))
    unset: Any = argparse.SUPPRESS if after_command else None
    group.add_argument("--url", default=unset, type=_not_blank("--url"),
                       help=f"Redis URL: redis://, rediss://, unix:// or redis+sentinel://hosts/service (default: "
                            f"${URL_VARIABLE}, else {DEFAULT_URL}; the demo runs an "
                            "embedded server unless --url is given)")
    group.add_argument("--cluster", action="store_true", default=unset or False,
                       help="the URL is a seed node of a Redis Cluster")
    group.add_argument("--namespace", default=unset, type=_not_blank("--namespace"),
                       help=f"key namespace (default {DEFAULT_NAMESPACE!r}; the demo picks a random one)")
    return options


def _command(commands: _Subcommands, name: str, handler: Callable[[argparse.Namespace], int], help: str,
             **options: Any) -> argparse.ArgumentParser:
    """Add a subcommand that also accepts the connection options."""
    parser = commands.add_parser(name, parents=[_connection_options(after_command=True)], help=help, **options)
    parser.set_defaults(handler=handler)
    return parser


def _add_stats_commands(commands: _Subcommands) -> None:
    stats = _command(commands, "stats", cmd_stats,
                     "print count, mean, std, min, max, recent mean and std, frozen and age per env")
    watch = _command(commands, "watch", cmd_watch, "the stats table, refreshed until Ctrl-C")
    for parser in (stats, watch):
        parser.add_argument("envs", nargs="*", metavar="ENV", help="envs to show (default: every env)")
    stats.add_argument("--json", action="store_true", help="machine-readable JSON (exact floats, m2 included)")
    watch.add_argument("--interval", type=_bounded(float, 0, strict=True), default=2.0,
                       help="seconds between refreshes (default 2)")
    watch.add_argument("--iterations", type=_bounded(int, 1), default=None,
                       help="stop after N refreshes (default: until Ctrl-C)")


def _add_admin_commands(commands: _Subcommands) -> None:
    export = _command(commands, "export", cmd_export, "write every env's statistics as a JSON snapshot")
    export.add_argument("file", metavar="FILE", help="output file, or - for stdout (written atomically)")
    export.add_argument("--force", action="store_true",
                        help="replace an existing FILE even with a snapshot of zero envs")
    restore = _command(commands, "import", cmd_import, "restore a JSON snapshot (validated before any write)")
    restore.add_argument("file", metavar="FILE", help="snapshot file, or - for stdin")
    reset = _command(commands, "reset", cmd_reset, "delete envs' statistics (needs --yes)")
    reset.add_argument("envs", nargs="+", metavar="ENV")
    reset.add_argument("--yes", action="store_true",
                       help="confirm: every process sharing them starts over (a half-life and the frozen flag stay)")
    snapshot = _command(commands, "snapshot", cmd_snapshot, "BGSAVE on every master and report the RDB files")
    snapshot.add_argument("--timeout", type=_bounded(float, 0, strict=True), default=60.0,
                          help="seconds to wait for the saves (default 60)")
    configure = _command(commands, "configure", cmd_configure,
                         "set or clear an env's half-life (decayed statistics) for every writer")
    configure.add_argument("env", metavar="ENV")
    decay = configure.add_mutually_exclusive_group(required=True)
    decay.add_argument("--half-life", type=_bounded(float, 0, strict=True), metavar="N",
                       help="keep decayed statistics with a half-life of N samples (setting or changing it "
                            "starts them afresh)")
    decay.add_argument("--no-decay", action="store_true", help="stop keeping decayed statistics")
    configure.add_argument("--create", action="store_true", help="configure an env that has no statistics yet")
    freeze = _command(commands, "freeze", cmd_freeze,
                      "freeze envs: every process's merges add nothing until unfreeze")
    unfreeze = _command(commands, "unfreeze", cmd_freeze, "let merges into envs count again")
    for parser, frozen in ((freeze, True), (unfreeze, False)):
        parser.add_argument("envs", nargs="+", metavar="ENV")
        parser.add_argument("--create", action="store_true", help="also envs that have no statistics yet")
        parser.set_defaults(frozen=frozen)
    _command(commands, "load-functions", cmd_load_functions,
             "FUNCTION LOAD the library on every master, so trainers can run with FCALL only")
    lua = commands.add_parser("lua", help="print an assembled script or the Function library (no server needed)",
                              description="Print the Lua a client runs: one operation (merge, replace, configure, "
                                          "freeze) as one script (SCRIPT LOAD it, then EVALSHA), or 'library' "
                                          "for FUNCTION LOAD.")
    lua.add_argument("what", choices=[*OPERATIONS, "library"])
    lua.set_defaults(handler=cmd_lua)


def _add_demo_command(commands: _Subcommands) -> None:
    demo = _command(
        commands, "demo", cmd_demo, "worker processes normalize 3 envs' rewards through one store, then check it",
        description="Without --url, runs an embedded Redis-protocol server (fakeredis with Lua) in this "
                    f"process; ${URL_VARIABLE} is deliberately ignored. With --url, uses that server, a random "
                    "namespace unless --namespace is given, and deletes the demo's keys afterwards unless --keep.")
    demo.add_argument("--workers", type=_bounded(int, 3), default=6,
                      help="worker processes, at least 3; worker i plays env i mod 3 (default 6)")
    demo.add_argument("--batches", type=_bounded(int, 1), default=200, help="batches per worker (default 200)")
    demo.add_argument("--batch-size", type=_bounded(int, 1), default=16, help="rewards per batch (default 16)")
    demo.add_argument("--seed", type=int, default=0, help="base seed; each worker derives its own (default 0)")
    demo.add_argument("--warmup", type=_bounded(int, 0), default=10, help="normalizer warmup (default 10)")
    demo.add_argument("--plot", metavar="FILE.png", help="draw raw vs normalized histograms (needs matplotlib)")
    demo.add_argument("--keep", action="store_true", help="with --url: leave the demo's statistics in place")


def build_parser() -> argparse.ArgumentParser:
    """The command line: connection options, then one subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_connection_options(after_command=False)],
        description="Inspect, back up and restore shared reward statistics in Redis; run the demo.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_stats_commands(commands)
    _add_admin_commands(commands)
    _add_demo_command(commands)
    add_prompt_commands(commands, _command, open_store)
    return parser


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _describe(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for a failure: what went wrong, with the server named when it is unreachable."""
    if isinstance(exc, StoreUnavailableError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the server is named below; the driver's words say what happened
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MasterNotFoundError):
        # redis-py appends the repr of every Sentinel client it asked: keep the first sentence.
        text = text.split(" : ", 1)[0] + " (are the Sentinels up, and is the service name right?)"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, RedisClusterException)):
        embedded_demo = args.handler is cmd_demo and args.url is None
        where = "the embedded server" if embedded_demo else redact(_url(args))
        return f"cannot reach Redis at {where}: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except _FAILURES as exc:
        _fail(_describe(exc, args))
        return 1


if __name__ == "__main__":
    sys.exit(main())
