"""``GroupIds``: the batch ids the adapters pass with each group they normalize.

A store counts a ``batch_id`` it has seen in the same env once, so an adapter's id must be the
same when the same group is sent again (a retry after an error whose fate is unknown) and
different for every other group. No framework we adapt hands us such an id: verl's ``uid`` is
shared by the ``n`` rollouts of a prompt, TRL and OpenRLHF pass none, Atropos's groups carry
none. So the id is built from the group itself:

* a digest of what identifies the group (its prompts, completions or token ids, its raw scores,
  and context such as a trainer step when the framework gives one), then
* an occurrence number: how many other groups with the same digest this process has in flight
  or has sent successfully. Two identical groups (the same answer sampled twice, say) are two
  batches and get numbers 0 and 1; a group whose call raised gives its number back, so sending
  it again reuses the id and is counted at most once.

The numbers are remembered for the last ``capacity`` digests per env (default 1,024, the number
of identified batches a store remembers per env): a digest forgotten here was last used more than
that many batches ago, so the store has forgotten its ids too, and numbering it from 0 again is a
new batch there. An id is ``<digest>:<number>``, 34 to 40 characters.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["GroupIds", "digest"]

DEFAULT_CAPACITY = 1024


def _plain(value: Any) -> Any:
    """JSON for what groups hold besides JSON's own types: arrays and tensors (``tolist``),
    numpy scalars (``item``), anything else by its ``repr``."""
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    return repr(value)


def digest(*parts: Any) -> str:
    """A 32-hex-digit digest of ``parts`` (JSON-encoded: floats by their shortest exact repr,
    so equal values give equal digests and any difference in a score changes it)."""
    text = json.dumps(parts, default=_plain, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class GroupIds:
    """Numbers the groups of one adapter (one store): ``with ids.claim(env, *parts) as batch_id``.

    Thread-safe (OpenRLHF calls reward functions from worker threads); claiming is quick and
    never waits on I/O.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        self._lock = threading.Lock()
        # env -> digest -> the occurrence numbers in flight or sent successfully
        self._used: dict[str, OrderedDict[str, set[int]]] = {}

    @contextmanager
    def claim(self, env: str, *parts: Any) -> Iterator[str]:
        """The id of the group identified by ``parts`` in ``env``, kept if the block succeeds
        and given back if it raises (so the same group sent again gets the same id)."""
        key = digest(*parts)
        with self._lock:
            digests = self._used.setdefault(env, OrderedDict())
            used = digests.setdefault(key, set())
            digests.move_to_end(key)
            number = next(n for n in range(len(used) + 1) if n not in used)
            used.add(number)
            while len(digests) > self._capacity:
                digests.popitem(last=False)
        try:
            yield f"{key}:{number}"
        except BaseException:
            with self._lock:
                remembered = self._used.get(env)
                still = remembered.get(key) if remembered is not None else None
                if still is not None:
                    still.discard(number)
            raise
