"""The Lua scripts: where their text comes from and how a client gets them.

Each atomic operation is one file in ``lua/`` (shipped inside the wheel as
``shared_rewardnorm/lua``); ``stats_lib.lua`` holds the helpers every operation shares and is
prepended to each operation's text, so validation is written once. The text is read once per
process; the ``Script`` objects are registered per client (redis-py computes the SHA locally,
sends EVALSHA, and reloads the script on NOSCRIPT after a ``SCRIPT FLUSH``, a restart or a
failover).

The same code also ships as a Redis 7 Function library (``function_library()``): loaded once
by an administrator (``FUNCTION LOAD``), it is called with ``FCALL``, survives restarts and
failovers (functions are part of the data set), and lets trainers run without the right to
load arbitrary Lua (``SCRIPT LOAD`` / ``EVAL``). Function and library names carry a hash of the
code, so a client never calls a library of another version by mistake.

Run ``shared-rewardnorm lua merge`` to print an assembled script (to ``SCRIPT LOAD`` it and
call it from ``redis-cli`` or another language's client), or ``shared-rewardnorm lua library``
to print the Function library.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from shared_rewardnorm._redis.connection import is_cluster
from shared_rewardnorm.errors import FunctionsNotLoadedError, translate_response_error

__all__ = [
    "OPERATIONS",
    "ClientScripts",
    "function_library",
    "function_name",
    "helpers_source",
    "library_name",
    "register_scripts",
    "script_source",
    "translate_script_error",
]

#: One Lua file per atomic operation.
OPERATIONS = ("merge", "replace", "configure", "freeze", "reseed",
              # per-prompt statistics (shared_rewardnorm/prompts.py)
              "prompt_update", "prompt_write", "prompt_configure", "prompt_forget")
_LIBRARY = "stats_lib"


def _read_lua(name: str) -> str:
    """Read ``lua/<name>.lua`` from the installed package, or from the source checkout.

    In a wheel the files live in ``shared_rewardnorm/lua``. An editable install serves the
    package straight from the checkout, where they sit in the top-level ``lua/`` directory.
    """
    # One name per joinpath: Python 3.10's Traversable.joinpath takes a single child.
    packaged = resources.files("shared_rewardnorm").joinpath("lua").joinpath(f"{name}.lua")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[2] / "lua" / f"{name}.lua"
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(f"Lua script {name}.lua is missing from the shared_rewardnorm install")


@functools.cache
def script_source(operation: str) -> str:
    """The full text of one operation's script: the shared helpers, then the operation."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown script {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return _read_lua(_LIBRARY) + "\n" + _read_lua(operation)


@functools.cache
def _code_version() -> str:
    code = "\0".join(script_source(name) for name in OPERATIONS)
    return hashlib.sha1(code.encode("utf-8")).hexdigest()[:12]


def library_name() -> str:
    """The Function library's name, ``shared_rewardnorm_<code hash>``."""
    return f"shared_rewardnorm_{_code_version()}"


def function_name(operation: str) -> str:
    """The Function that runs ``operation``, ``rewardnorm_<operation>_<code hash>``."""
    return f"rewardnorm_{operation}_{_code_version()}"


@functools.cache
def function_library() -> str:
    """The Redis 7 Function library: the shared helpers at the top level (built once, when the
    library loads), and each operation's file as the body of a function whose parameters are
    named KEYS and ARGV, so the very same text runs as a script and as a function."""
    parts = [f"#!lua name={library_name()}\n", _read_lua(_LIBRARY), "\n"]
    parts.extend(f"redis.register_function('{function_name(name)}', function(KEYS, ARGV)\n"
                 f"{_read_lua(name)}\nend)\n" for name in OPERATIONS)
    return "".join(parts)


def _no_usable_function(error: Exception) -> bool:
    """Whether a failed FCALL means "no usable Function here": not loaded ("Function not found"),
    an old server ("unknown command 'FCALL'"), or a user allowed EVALSHA but not FCALL (NOPERM
    "... the 'fcall' command"). Only FCALL produces these replies (our own REWARDNORM_ errors
    never match, whatever key they name), so a request sent again with EVALSHA cannot loop."""
    text = str(error)
    lowered = text.lower()
    if text.startswith("Function not found"):
        return True
    if isinstance(error, NoPermissionError):
        return "'fcall' command" in lowered
    return lowered.startswith(("unknown command 'fcall'", "err unknown command 'fcall'"))


class ClientScripts:
    """How one client (sync, asyncio, or cluster) runs our operations: ``FCALL`` of the
    Function library, or ``EVALSHA`` of the scripts. After NOSCRIPT (a ``SCRIPT FLUSH``, a
    restart, a failover to a replica that never saw the script) the next call sends the script
    itself with ``EVAL``, which also caches it again; calling ``evalsha`` directly rather than
    through redis-py's ``Script`` saves a few microseconds per call.

    ``functions``: ``True`` only ever calls the Functions (least privilege: no script loading);
    ``False`` only ever uses EVALSHA; ``None`` (auto) tries the Functions first and falls back to
    EVALSHA for good when the server has no such Function.
    """

    def __init__(self, client: Any, functions: bool | None) -> None:
        if functions not in (None, True, False):
            raise TypeError(f"functions must be True, False or None (auto), got {functions!r}")
        self._client = client
        self._use_functions = functions is not False
        self._may_fall_back = functions is None
        self._scripts = {name: client.register_script(script_source(name)) for name in OPERATIONS}
        self._functions = {name: function_name(name) for name in OPERATIONS}
        self._send_source = False
        self._cluster = is_cluster(client)

    @property
    def using_functions(self) -> bool:
        """Whether calls currently go through FCALL."""
        return self._use_functions

    def script(self, operation: str) -> Any:
        """The registered ``Script`` object of an operation."""
        return self._scripts[operation]

    def call(self, operation: str, keys: tuple[str, ...], args: tuple[str, ...], pipeline: Any = None) -> Any:
        """Run an operation; returns the reply, or an awaitable on an asyncio client (or queues
        the call on ``pipeline``, a pipeline of this client; not on a cluster)."""
        if pipeline is not None:
            return self._queue(pipeline, operation, keys, args)
        if self._use_functions:
            if self._cluster:
                # redis-py cannot see FCALL's keys (they are "movable") and would ask a node
                # COMMAND GETKEYS before every call: route it to the key's node ourselves.
                return self._client.execute_command("FCALL", self._functions[operation], len(keys), *keys, *args,
                                                    target_nodes=self._client.get_node_from_key(keys[0]))
            return self._client.fcall(self._functions[operation], len(keys), *keys, *args)
        script = self._scripts[operation]
        if self._send_source:
            self._send_source = False
            return self._client.eval(script.script, len(keys), *keys, *args)
        return self._client.evalsha(script.sha, len(keys), *keys, *args)

    def _queue(self, pipeline: Any, operation: str, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        if self._use_functions:
            return pipeline.fcall(self._functions[operation], len(keys), *keys, *args)
        script = self._scripts[operation]
        if self._send_source:
            self._send_source = False
            return pipeline.eval(script.script, len(keys), *keys, *args)
        return pipeline.evalsha(script.sha, len(keys), *keys, *args)

    def fall_back(self, error: Exception) -> bool:
        """After a failed call, decide whether to send the request again: after NOSCRIPT (the
        next call sends the script's text), or in auto mode when there is no usable Function
        (switching to EVALSHA for good; also for concurrent calls that were already on their
        way when another one switched)."""
        if isinstance(error, NoScriptError):
            self._send_source = True
            return True
        if self._may_fall_back and _no_usable_function(error):
            self._use_functions = False
            return True
        return False


def register_scripts(client: Any, functions: bool | None = None) -> ClientScripts:
    """How ``client`` will run our operations (no round trip: redis-py loads scripts lazily)."""
    return ClientScripts(client, functions)


def helpers_source() -> str:
    """The text of ``stats_lib.lua``, the helpers every operation's script starts with (the
    server-cost benchmark builds its partial variants of the merge from it)."""
    return _read_lua(_LIBRARY)


def translate_script_error(error: ResponseError) -> Exception:
    """A script call's error as a library exception: a missing Function library becomes
    ``FunctionsNotLoadedError`` (with how to load it), a ``REWARDNORM_*`` reply its class
    (``errors.translate_response_error``), anything else stays as it is."""
    message = str(error)
    if message.startswith("Function not found"):
        return FunctionsNotLoadedError(f"the server has no Function library {library_name()} (Redis says "
                                       f"{message!r}); load it once with StatsStore(...).load_functions() "
                                       "or `shared-rewardnorm load-functions`")
    return translate_response_error(error)
