"""Key names, in one place: every key the library reads or writes is built here.

An env's keys all share one hash tag, ``{<env>}``, so they live in one cluster slot and a script
can touch all of them atomically: the stats hash ``<namespace>:{<env>}`` and each client's
batch record ``<namespace>:{<env>}:batches:<client id>``. Names are validated before they reach
here (``inputs.validate_env`` / ``validate_namespace``: no braces, so the tag is unambiguous).
"""

from __future__ import annotations

__all__ = ["batch_record_key", "env_of_key", "env_scan_pattern", "glob_escape", "stats_key"]


def stats_key(namespace: str, env: str) -> str:
    """The key of an env's stats hash: ``<namespace>:{<env>}``; the braces are the cluster hash tag."""
    return f"{namespace}:{{{env}}}"


def batch_record_key(stats_key: str, client_id: str) -> str:
    """The key recording which batches of one client were merged into one env: it extends the
    env's stats key, so it shares the env's hash tag (and cluster slot)."""
    return f"{stats_key}:batches:{client_id}"


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH's glob characters so a namespace like ``run[1]`` matches literally."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def env_scan_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for the stats keys of a namespace (it also matches a few keys that
    are not; ``env_of_key`` tells them apart)."""
    return glob_escape(f"{namespace}:{{") + "*}"


def env_of_key(namespace: str, key: str) -> str | None:
    """The env whose stats hash ``key`` is, or ``None`` for any other key."""
    prefix = f"{namespace}:{{"
    env = key[len(prefix):-1]
    if key.startswith(prefix) and key.endswith("}") and env and "{" not in env and "}" not in env:
        return env
    return None
