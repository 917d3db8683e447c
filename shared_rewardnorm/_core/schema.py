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
#: Written beside the statistics for people reading the hash with ``redis-cli``; never read back.
DISPLAY_FIELDS = ("std",)

#: The groups as stats_lib.lua defines them, by name (what ``tests/behaviour/test_schema.py`` compares).
GROUPS = ("STAT_FIELDS", "DECAY_FIELDS", "CONFIG_FIELDS", "ACTIVITY_FIELDS", "DISPLAY_FIELDS")

#: Everything read back from an env's hash, in the order of reads and script replies.
ENV_FIELDS = STAT_FIELDS + DECAY_FIELDS + CONFIG_FIELDS + ACTIVITY_FIELDS
#: The fields after the totals: an env's state, as ``replace`` takes it from a snapshot.
STATE_FIELDS = ENV_FIELDS[len(STAT_FIELDS):]
