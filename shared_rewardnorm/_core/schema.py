"""The stats schema: the fields of an env's hash, named once for all of Python.

``lua/stats_lib.lua`` names the same groups once for Lua (its ``*_FIELDS`` tables), and
``tests/behaviour/test_schema.py`` checks that the two agree, so a field is added in exactly two places.
Every other module (encoding, decoding, errors, checkpoints, the CLI, benchmarks) derives its
field lists from here. No imports: anything may import this module.
"""

from __future__ import annotations

__all__ = [
           "ACTIVITY_FIELDS",
           "CONFIG_FIELDS",
           "DECAY_FIELDS",
           "DISPLAY_FIELDS",
           "ENV_FIELDS",
           "GROUPS",
           "IDENTITY_FIELDS",
           "STATE_FIELDS",
           "STAT_FIELDS",
]

#: The totals, in the order scripts take and return them and ``RunningStats`` holds them.
STAT_FIELDS = ("count", "mean", "m2", "min", "max")
#: The decayed statistics (total weight, weighted mean, weighted sum of squared deviations),
#: kept only while the env has a half-life.
DECAY_FIELDS = ("weight", "wmean", "wm2")
#: The env's configuration (absent: no decay, not frozen).
CONFIG_FIELDS = ("half_life", "frozen")
#: Written by each merge: batches merged since the last replace, and the server time of the
#: last one in milliseconds (absent: 0, never).
ACTIVITY_FIELDS = ("merges", "updated_at")
#: The statistics' identity: ``epoch``, the server time in microseconds when they were created
#: (a first merge into an env without one, a replace, a re-seed), and ``origin``, how
#: (``merge``, ``replace``: deliberate, ``reseed``: a client restored its view after a loss).
IDENTITY_FIELDS = ("epoch", "origin")
#: Written beside the statistics for people reading the hash with ``redis-cli``; never read back.
DISPLAY_FIELDS = ("std",)

#: The groups as stats_lib.lua defines them, by name (what ``tests/behaviour/test_schema.py`` compares).
GROUPS = ("STAT_FIELDS", "DECAY_FIELDS", "CONFIG_FIELDS", "ACTIVITY_FIELDS", "IDENTITY_FIELDS", "DISPLAY_FIELDS")

#: Everything read back from an env's hash, in the order of reads and script replies.
ENV_FIELDS = STAT_FIELDS + DECAY_FIELDS + CONFIG_FIELDS + ACTIVITY_FIELDS + IDENTITY_FIELDS
#: The fields after the totals that a snapshot sets: an env's state, as ``replace`` takes it
#: (the identity is not part of it: a replace always creates a new one).
STATE_FIELDS = DECAY_FIELDS + CONFIG_FIELDS + ACTIVITY_FIELDS
