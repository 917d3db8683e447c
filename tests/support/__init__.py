"""Support code shared by the test modules and the benchmarks: server processes (one server,
a cluster, Sentinels, a failover), TCP proxies that drop or delay traffic, worker processes,
oracles computed from definitions, driving operations with canned replies, and small helpers.

A package, imported as ``tests.support.<module>`` with the repository root on ``sys.path``
(``python -m pytest`` from the root puts it there; the benchmarks add it themselves).
"""

from __future__ import annotations

from pathlib import Path

#: The repository root: the checkout's README, docs, examples, benchmarks and lua/.
REPO = Path(__file__).resolve().parents[2]
