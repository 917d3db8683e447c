"""Shared reward normalization for OpenRLHF reward functions (no extra: nothing is imported from
OpenRLHF, and torch only if the wrapped function returns tensors).

OpenRLHF loads ``reward_func`` from the Python file given as ``--remote_rm_url`` in every rollout
actor, and calls it once per sample, ``reward_func([query], [prompt], [label])``, in a worker
thread (``asyncio.to_thread``), many samples at once. It reads ``{"rewards", "scores",
"extra_logs"}`` back: ``rewards`` drive the advantages, ``scores`` (raw rewards when absent) the
dynamic filtering. The wrapper normalizes ``rewards`` against statistics shared through Redis by
every actor of every node::

    # reward.py, passed as --remote_rm_url reward.py
    from shared_rewardnorm.openrlhf import SharedNormRewardFunc

    def my_reward(queries, prompts, labels, **kwargs):
        ...
        return {"rewards": torch.tensor(values), "scores": torch.tensor(values), "extra_logs": {}}

    reward_func = SharedNormRewardFunc(my_reward, redis="redis://redis-host:6379/0")

``scores`` stay raw (filtering thresholds keep their meaning), and ``extra_logs["raw_reward"]``
carries the raw rewards to the logs.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared_rewardnorm._core.inputs import validate_env, validate_namespace
from shared_rewardnorm._core.normalization import NormalizerSettings
from shared_rewardnorm._core.outage import validate_on_unavailable
from shared_rewardnorm._redis.connection import check_url, url_from_environment
from shared_rewardnorm.integrations.batch_ids import GroupIds
from shared_rewardnorm.integrations.loops import EnvNormalizers, LoopThread

__all__ = ["SharedNormRewardFunc"]


def _values(rewards: Any, count: int) -> list[Any]:
    """The rewards as a list of numbers, one per sample (a tensor, an array, a sequence; a bare
    number for a call of one sample)."""
    if hasattr(rewards, "tolist"):
        rewards = rewards.tolist()
    if isinstance(rewards, int | float) and not isinstance(rewards, bool):
        rewards = [rewards]
    if not isinstance(rewards, Sequence) or isinstance(rewards, str | bytes):
        raise TypeError(f"reward function returned rewards of type {type(rewards).__name__}, "
                        "not a tensor, an array or a list of numbers")
    values = list(rewards)
    if len(values) != count:
        raise ValueError(f"reward function returned {len(values)} rewards for {count} queries")
    return values


def _like(original: Any, values: list[float]) -> Any:
    """``values`` in the form the wrapped function returned its rewards: a tensor on the same
    device (floating point: an integer tensor becomes float32), an array, a number or a list."""
    if hasattr(original, "new_tensor"):  # torch.Tensor
        like = original if original.is_floating_point() else original.float()
        return like.new_tensor(values).reshape(original.shape)
    if hasattr(original, "dtype") and hasattr(original, "reshape"):  # numpy.ndarray
        import numpy as np

        dtype = original.dtype if original.dtype.kind == "f" else np.float64
        return np.asarray(values, dtype=dtype).reshape(original.shape)
    if isinstance(original, int | float):
        return values[0]
    return list(values)


class SharedNormRewardFunc:
    """An OpenRLHF ``reward_func`` whose ``rewards`` are normalized against shared statistics.

    Args:
        func: the reward function, ``func(queries, prompts, labels, **kwargs)`` returning a
            mapping with ``rewards`` (``scores`` and ``extra_logs`` optional).
        env: the statistics key; default ``func.__name__``.
        redis: a URL, or ``None``: ``$SHARED_REWARDNORM_URL``, else the embedded store (local to
            the process, with a logged warning).
        mode, clip, warmup, eps, namespace, statistics: as for ``SharedRewardNormalizer``.
        on_unavailable: as for ``SharedRewardNormalizer``, but ``"local"`` by default: a store
            outage never fails a reward call.

    The calls of all threads meet on one event loop of the wrapper's own (``loops.LoopThread``)
    and share one asyncio store, so concurrent per-sample calls coalesce into one script call.
    Each call's batch id is a digest of its queries, prompts, labels and raw rewards, numbered
    among identical calls (``integrations.batch_ids``): a retry of a call that raised counts once.
    ``close()`` (also run at exit) closes the connections and stops the loop's thread.
    """

    def __init__(self, func: Callable[..., Any], env: str | None = None, redis: str | None = None, *,
                 mode: str = "zscore", clip: float | None = 5.0, warmup: int = 10, eps: float = 1e-8,
                 namespace: str = "rewardnorm", statistics: str = "total", on_unavailable: str = "local") -> None:
        if not callable(func):
            raise TypeError(f"func must be a reward function, got {type(func).__name__}")
        name = getattr(func, "__name__", None)
        if env is None and name is None:
            raise TypeError(f"{type(func).__name__} has no __name__: pass env= to name its statistics")
        settings = {"mode": mode, "clip": clip, "warmup": warmup, "eps": eps, "statistics": statistics,
                    "on_unavailable": on_unavailable}
        NormalizerSettings.create(mode, clip, warmup, eps, statistics)
        validate_on_unavailable(on_unavailable)
        self._env = validate_env(env if env is not None else name)
        validate_namespace(namespace)
        if redis is None:
            url_from_environment()
        elif isinstance(redis, str):
            check_url(redis)
        else:
            raise TypeError(f"redis must be a URL or None (the wrapper opens its own asyncio connections in its "
                            f"own thread), got {type(redis).__name__}")
        self._func = func
        self._loop = LoopThread(lambda: EnvNormalizers(redis, namespace, **settings),
                                name=f"shared-rewardnorm-openrlhf-{self._env}")
        self._ids = GroupIds()
        self.__name__ = name if name is not None else self._env
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func
        # At exit, close in the loop's thread before the interpreter tears threads down.
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def env(self) -> str:
        """The statistics key."""
        return self._env

    def __call__(self, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                 **kwargs: Any) -> dict[str, Any]:
        result = self._func(queries, prompts, labels, **kwargs)
        if not isinstance(result, Mapping) or "rewards" not in result:
            raise TypeError(f"reward function {self.__name__} must return a mapping with 'rewards', got "
                            f"{type(result).__name__}")
        raw = result["rewards"]
        values = _values(raw, len(queries))
        normalized = self._normalize(values, queries, prompts, labels)
        out = dict(result)
        out["rewards"] = _like(raw, normalized)
        if out.get("scores") is None:
            out["scores"] = raw  # OpenRLHF filters on scores, else on rewards: keep them raw
        out["extra_logs"] = {**(result.get("extra_logs") or {}), "raw_reward": raw}
        return out

    def _normalize(self, values: list[Any], queries: Sequence[str], prompts: Sequence[str],
                   labels: Sequence[Any]) -> list[float]:
        """The one place rewards meet the store (an outage policy goes here)."""
        with self._ids.claim(self._env, list(queries), list(prompts), list(labels), values) as batch_id:
            return self._loop.run(lambda norms: norms.normalizer(self._env).normalize(values, batch_id=batch_id))

    def close(self) -> None:
        """Close the connections and stop the loop's thread (a later call starts them again)."""
        self._loop.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__name__}, env={self._env!r})"


def _close_at_exit(ref: weakref.ref[SharedNormRewardFunc]) -> None:
    wrapper = ref()
    if wrapper is not None:
        wrapper.close()
