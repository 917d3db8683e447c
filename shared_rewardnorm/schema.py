"""The stats schema: the fields of an env's hash, named once for all of Python.

``lua/stats_lib.lua`` names the same fields once for Lua (``STAT_FIELDS`` there), and
``tests/test_schema.py`` checks that the two agree, so a field is added in exactly two places.
Every other module (encoding, decoding, errors, checkpoints, the CLI, benchmarks) derives its
field lists from here. No imports: anything may import this module.
"""

from __future__ import annotations

__all__ = ["STAT_FIELDS", "DISPLAY_FIELDS"]

#: The totals, in the order scripts take and return them and ``RunningStats`` holds them.
STAT_FIELDS = ("count", "mean", "m2", "min", "max")
#: Written beside the statistics for people reading the hash with ``redis-cli``; never read back.
DISPLAY_FIELDS = ("std",)
