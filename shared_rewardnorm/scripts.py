"""The Lua scripts: where their text comes from and how a client gets them.

Each atomic operation is one file in ``lua/`` (shipped inside the wheel as
``shared_rewardnorm/lua``); ``stats_lib.lua`` holds the helpers every operation shares and is
prepended to each operation's text, so validation is written once. The text is read once per
process; the ``Script`` objects are registered per client (redis-py computes the SHA locally,
sends EVALSHA, and reloads the script on NOSCRIPT after a ``SCRIPT FLUSH``, a restart or a
failover).

Run ``python -m shared_rewardnorm.scripts merge`` to print an assembled script, for example to
``SCRIPT LOAD`` it and call it from ``redis-cli`` or another language's client.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["OPERATIONS", "script_source", "ClientScripts", "register_scripts"]

#: One Lua file per atomic operation.
OPERATIONS = ("merge", "replace")
_LIBRARY = "stats_lib"


def _read_lua(name: str) -> str:
    """Read ``lua/<name>.lua`` from the installed package, or from the source checkout.

    In a wheel the files live in ``shared_rewardnorm/lua``. An editable install serves the
    package straight from the checkout, where they sit in the top-level ``lua/`` directory.
    """
    packaged = resources.files(__package__).joinpath("lua", f"{name}.lua")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "lua" / f"{name}.lua"
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(f"Lua script {name}.lua is missing from the shared_rewardnorm install")


@functools.lru_cache(maxsize=None)
def script_source(operation: str) -> str:
    """The full text of one operation's script: the shared helpers, then the operation."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown script {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return _read_lua(_LIBRARY) + "\n" + _read_lua(operation)


@dataclass(frozen=True)
class ClientScripts:
    """The scripts registered on one client (sync, asyncio, or cluster)."""

    merge: Any
    replace: Any


def register_scripts(client: Any) -> ClientScripts:
    """Register every operation's script on ``client`` (no round trip: redis-py loads lazily)."""
    return ClientScripts(**{name: client.register_script(script_source(name)) for name in OPERATIONS})


def main(argv: list[str] | None = None) -> int:
    """Print the assembled text of the named scripts."""
    names = sys.argv[1:] if argv is None else argv
    if not names or any(name not in OPERATIONS for name in names):
        print(f"usage: python -m shared_rewardnorm.scripts {{{','.join(OPERATIONS)}}} ...", file=sys.stderr)
        return 2
    for name in names:
        sys.stdout.write(script_source(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
