"""The envs a store serves through its normalizers, for the store-level metrics, sans-I/O.

A store's ``metrics()`` reads the envs from Redis, which says nothing about whether a
normalizer of this process is answering locally (``on_unavailable="local"``), and which fails
while the store is unreachable: exactly when a trainer's logging most needs to keep going and
say so. So every normalizer registers with the store it normalizes through (one it was given
as ``redis=``, or the one it created), and the store's metrics use what they know:

- ``reward_norm/<env>/degraded``: 1.0 while any normalizer of ``env`` through this store
  answers locally, else 0.0, for every env normalized through it (the store's own figures
  otherwise: they lack the samples a degraded normalizer owes).
- While the store is unreachable, a store with a normalizer running with
  ``on_unavailable="local"`` answers for the envs those normalizers serve from their local
  views: the newest shared statistics any of them saw, with every sample each has normalized
  locally since merged in (what they will merge when the store answers), and ``degraded`` 1.0,
  since these figures are not the store's. Envs no such normalizer serves are left out (nothing
  here knows them). A store without one raises ``StoreUnavailableError`` as before.
- While a normalizer of the store is degraded, the store is known to be down: the metrics'
  reads get a single try each (``Once``), as the normalizers' probes do, rather than waiting
  out the retry policy on every call.

The normalizers are held weakly: one that is dropped stops counting as served.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from shared_rewardnorm._core.formats import metrics_from_info
from shared_rewardnorm._core.outage import view_with
from shared_rewardnorm._core.requests import Done, Once, Operation, advance
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.stats import RunningStats

__all__ = ["ServedEnv", "ServedEnvs", "single_tries"]


class ServedEnv(Protocol):
    """What the store needs of a normalizer (``NormalizerCore`` is one)."""

    @property
    def env(self) -> str: ...

    @property
    def degraded(self) -> bool: ...

    @property
    def on_unavailable(self) -> str: ...

    @property
    def shared_info(self) -> EnvInfo: ...

    @property
    def owed(self) -> RunningStats: ...


class ServedEnvs:
    """The normalizers normalizing through one store (weakly held; threads may register)."""

    def __init__(self) -> None:
        self._normalizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, normalizer: ServedEnv) -> None:
        """Count ``normalizer`` as normalizing through this store."""
        with self._lock:
            self._normalizers.add(normalizer)

    def by_env(self) -> dict[str, list[ServedEnv]]:
        """The live normalizers per env, envs sorted."""
        with self._lock:
            normalizers: list[ServedEnv] = list(self._normalizers)
        grouped: dict[str, list[ServedEnv]] = {}
        for normalizer in normalizers:
            grouped.setdefault(normalizer.env, []).append(normalizer)
        return dict(sorted(grouped.items()))

    @property
    def probing(self) -> bool:
        """Whether a normalizer of this store is degraded (the store is known to be down)."""
        return any(n.degraded for group in self.by_env().values() for n in group)

    @property
    def answers_locally(self) -> bool:
        """Whether a normalizer of this store runs with ``on_unavailable="local"``."""
        return any(n.on_unavailable == "local" for group in self.by_env().values() for n in group)

    def flags(self, envs: Iterable[str] | None = None) -> dict[str, float]:
        """``degraded`` (1.0/0.0) of every env normalized through this store (or of those of
        ``envs`` that are)."""
        served = self.by_env()
        names = served if envs is None else [env for env in envs if env in served]
        return {env: 1.0 if any(n.degraded for n in served[env]) else 0.0 for env in names}

    def local_view(self, env: str) -> EnvInfo | None:
        """``env`` as its ``on_unavailable="local"`` normalizers know it: the newest shared view
        among them (the largest count: the shared count only grows, barring a loss) with the
        samples each owes merged in; ``None`` if no such normalizer serves ``env``."""
        local = [n for n in self.by_env().get(env, []) if n.on_unavailable == "local"]
        if not local:
            return None
        newest = max((n.shared_info for n in local), key=lambda info: info.stats.count)
        return view_with(newest, RunningStats.combine(n.owed for n in local))

    def local_metrics(self, envs: Iterable[str] | None = None) -> dict[str, float]:
        """The store-level metrics answered from the local views while the store is unreachable:
        ``reward_norm/<env>/<stat>`` and ``reward_norm/<env>/degraded`` 1.0 for each env (of
        ``envs``, or every one) an ``on_unavailable="local"`` normalizer serves; with ``envs``
        ``None``, those with statistics, as the store's own metrics list them."""
        names = list(self.by_env()) if envs is None else list(envs)
        metrics: dict[str, float] = {}
        for env in sorted(names):
            view = self.local_view(env)
            if view is None or (envs is None and view.stats.is_empty):
                continue
            metrics.update(metrics_from_info(view, prefix=f"reward_norm/{env}"))
            metrics[f"reward_norm/{env}/degraded"] = 1.0
        return metrics


def single_tries(operation: Operation[Any]) -> Operation[Any]:
    """``operation`` with every request it yields sent with a single try (``Once``)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        step = advance(operation, reply, error)
        if isinstance(step, Done):
            return step.value
        error = None
        try:
            reply = yield step if isinstance(step, Once) else Once(step)
        except BaseException as exc:  # handed to the operation, as the shells do
            error = exc
