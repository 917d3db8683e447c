"""Telling lost statistics from deliberately replaced ones, sans-I/O.

Every env's statistics carry an identity (``lua/stats_lib.lua``'s ``IDENTITY_FIELDS``): an
``epoch`` (the server time in microseconds when they were created) and an ``origin`` (how:
``merge``, the first merge into an env without one; ``replace``, a deliberate ``set``/``reset``/
``restore``/checkpoint load; ``reseed``, a client's repair after a loss). Persistence, replicas
and restarts keep both, so a normalizer that compares each reply with its last view can tell:

- the same epoch: the same statistics (nothing to say);
- an epoch it saw before and has since seen replaced: a reply that was overtaken by a later one
  (concurrent asyncio calls); it is not adopted as the view;
- a new epoch of origin ``replace``: somebody replaced them on purpose; adopted as they are;
- a new epoch of origin ``reseed``: another client found them lost and put its view back;
  adopted (this client's owed batches are still merged on their own);
- no epoch, or a new one of origin ``merge``: the statistics this normalizer knew are gone (the
  server came back empty, a failover to a replica that had nothing, a FLUSHDB, eviction) and a
  merge recreated them from nothing. That is a loss: logged as an ERROR and, by default, repaired
  with ``reseed.lua`` (the last view merged with what the env holds now, only if the epoch is
  still the one found: first writer wins).
"""

from __future__ import annotations

import enum

from shared_rewardnorm.envinfo import EnvInfo

__all__ = ["ON_LOST", "Verdict", "judge"]

#: The accepted values of ``on_lost=``: repair a loss from the last view, or only log it.
ON_LOST = ("reseed", "log")


class Verdict(enum.Enum):
    """What a reply says about the statistics a normalizer knew."""

    SAME = "same"
    STALE = "stale"
    REPLACED = "replaced"
    RESEEDED = "reseeded"
    LOST = "lost"


def judge(known: EnvInfo, found: EnvInfo, retired: frozenset[int] | set[int]) -> Verdict:
    """Compare a reply (``found``) with the last view (``known``); ``retired`` holds the epochs
    this normalizer has seen replaced. Only a view with statistics can be lost: nothing was
    known of an env never merged into (or known without an identity, as written by an older
    version of this library)."""
    if found.epoch == known.epoch or known.epoch is None or known.stats.count == 0:
        return Verdict.SAME
    if found.epoch is not None and found.epoch in retired:
        return Verdict.STALE
    if found.origin == "replace":
        return Verdict.REPLACED
    if found.origin == "reseed":
        return Verdict.RESEEDED
    return Verdict.LOST
