"""Shared reward normalization for TRL reward functions (the ``trl`` extra).

``SharedNormRewardFunc`` wraps a reward function of TRL's ``GRPOTrainer`` (or any trainer that
calls ``func(prompts=..., completions=..., **kwargs)`` and reads one reward per completion)::

    from shared_rewardnorm.trl import SharedNormRewardFunc

    def correctness(prompts, completions, **kwargs):
        return [1.0 if "42" in c else 0.0 for c in completions]

    trainer = GRPOTrainer(model, reward_funcs=[SharedNormRewardFunc(correctness, redis=URL)], ...)

Every process (every rank, every node) that wraps a function for the same env normalizes its
outputs against one set of running statistics. Nothing from TRL is imported here: the calling
convention is all the wrapper relies on. What normalization does to GRPO's advantages (often
nothing: per-group standardization cancels it) is in docs/user/training.md.

``prompt_ids="hash"`` (or the name of a dataset column) also records every reward under its
prompt's id in the env's ``PromptStats``, for difficulty filtering and per-prompt baselines
(docs/user/prompts.md).
"""

from __future__ import annotations

import functools
import inspect
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from shared_rewardnorm._core.formats import metrics_from_stats
from shared_rewardnorm._core.inputs import validate_env, validate_namespace
from shared_rewardnorm._core.normalization import NormalizerSettings
from shared_rewardnorm._core.normalizer_ops import NormalizerCore
from shared_rewardnorm._core.outage import validate_on_unavailable
from shared_rewardnorm._core.prompt_ops import validate_prompt_ids
from shared_rewardnorm._redis.connection import check_url, resolve_async_client, resolve_client, url_from_environment
from shared_rewardnorm.aio import AsyncSharedRewardNormalizer
from shared_rewardnorm.aio.prompts import AsyncPromptStats
from shared_rewardnorm.integrations.batch_ids import GroupIds
from shared_rewardnorm.integrations.loops import PerLoop
from shared_rewardnorm.integrations.prompt_ids import OutageGate, hash_id
from shared_rewardnorm.prompts import PromptStats
from shared_rewardnorm.sync import SharedRewardNormalizer

__all__ = ["SharedNormRewardFunc"]

# Named by the public import path, which is what users configure logging for.
logger = logging.getLogger("shared_rewardnorm.trl")

#: ``prompt_ids=`` value that hashes each prompt's text (``integrations.prompt_ids.hash_id``).
HASH = "hash"


class _Settings(TypedDict):
    """The normalizer settings a wrapper passes to each normalizer it makes."""

    mode: str
    clip: float | None
    warmup: int
    eps: float
    on_unavailable: str


def _is_async(func: Any) -> bool:
    """Whether calling ``func`` returns a coroutine (functions, partials, callable instances),
    as TRL decides which reward functions to await."""
    while isinstance(func, functools.partial):
        func = func.func
    # The __call__ attribute itself, not callable(): an instance with an async __call__ counts.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004


def _callable_name(func: Any) -> str | None:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", None)


def _group(args: tuple[Any, ...], kwargs: dict[str, Any], values: list[Any]) -> tuple[Any, ...]:
    """What identifies a call's group for its batch id: the trainer's global step (TRL passes
    ``trainer_state``), the prompts, the completions and the rewards."""
    step = getattr(kwargs.get("trainer_state"), "global_step", None)
    prompts = kwargs.get("prompts", args[0] if args else None)
    completions = kwargs.get("completions", args[1] if len(args) > 1 else None)
    return step, prompts, completions, values


def _validate_prompt_ids(prompt_ids: Any) -> str | None:
    if prompt_ids is not None and (not isinstance(prompt_ids, str) or not prompt_ids):
        raise TypeError(f"prompt_ids must be None, {HASH!r} or the name of a dataset column TRL passes, "
                        f"got {prompt_ids!r}")
    return prompt_ids


def _as_id(value: Any, column: str, position: int) -> str:
    """A column's value as a prompt id: a str as it is, an integer (a dataset index, a numpy
    integer) in decimal."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bool):
        try:
            return str(operator.index(value))
        except TypeError:
            pass
    raise TypeError(f"column {column!r}[{position}] is a {type(value).__name__} ({value!r}): prompt ids come "
                    "from str or integer columns")


def _prompt_ids_of(source: str, args: tuple[Any, ...], kwargs: dict[str, Any], positions: list[int]) -> list[str]:
    """The prompt id of each counted completion (``positions``): a hash of its prompt, or the
    value of column ``source`` (TRL passes every dataset column as a keyword argument, one value
    per completion)."""
    if source == HASH:
        prompts = kwargs.get("prompts", args[0] if args else None)
        if prompts is None:
            raise TypeError("prompt_ids='hash' needs the prompts (TRL passes prompts=, one per completion)")
        return [hash_id(prompts[i]) for i in positions]
    if source not in kwargs:
        raise TypeError(f"prompt_ids={source!r}: the reward function got no {source!r} argument (TRL passes "
                        f"the dataset's columns; it has {sorted(kwargs)})")
    column = kwargs[source]
    # The store's own checks (non-empty, at most 256 characters, UTF-8), before anything is sent.
    return validate_prompt_ids([_as_id(column[i], source, i) for i in positions], f"column {source!r}")


def _is_reward(value: Any) -> bool:
    """A reward to normalize; ``None`` and NaN mean "no reward for this completion" to TRL.

    NaN is the one value unequal to itself, which holds for any kind of number (``float``,
    ``numpy.float32``, a 0-d tensor), where ``isinstance(value, float)`` misses most of them.
    Anything whose comparison is not a single truth value (a list, an array) is left for the
    normalizer's input checks to refuse."""
    if value is None:
        return False
    try:
        return not bool(value != value)  # noqa: PLR0124 (the NaN test above)
    except (TypeError, ValueError):
        return True


class SharedNormRewardFunc:
    """A reward function whose outputs are normalized against statistics shared through Redis.

    Args:
        func: the reward function, sync or ``async`` (the wrapper is then awaited too).
        env: the statistics key; default the function's ``__name__``, which the wrapper keeps
            (TRL names its reward columns and metrics with it).
        redis: a URL, a client (``redis.Redis`` for a sync ``func``, ``redis.asyncio.Redis`` for an
            async one), or ``None``: ``$SHARED_REWARDNORM_URL``, else the embedded store (local
            to the process, with a logged warning).
        mode, clip, warmup, eps, namespace: as for ``SharedRewardNormalizer``.
        on_unavailable: as for ``SharedRewardNormalizer``, but ``"local"`` by default: a store
            outage never ends a training step (the rewards are normalized against the last
            shared statistics plus those seen since, merged once the store answers again).
        prompt_ids: ``None`` (default: no per-prompt statistics), ``"hash"`` (each completion's
            prompt id is a digest of ``repr`` of its prompt, ``integrations.prompt_ids.hash_id``)
            or the name of a dataset column that TRL passes as a keyword argument, holding str
            or integer ids (``"id"``: ``str(value)``). Each call then also records every raw
            reward it counts under its prompt's id in ``PromptStats(env)`` on the same store,
            once, with the call's batch id. A store outage skips the recording (logged once per
            outage, tried again every 30 s), never the step.

    ``None`` and NaN rewards pass through untouched and are not counted. When TRL passes
    ``log_metric``, the wrapper reports ``reward_norm/<env>/count|mean|std|min|max``.

    Each call's batch id is a digest of the trainer's global step (from TRL's ``trainer_state``),
    the prompts, the completions and the rewards, numbered among identical calls
    (``integrations.batch_ids``): calling again after a call that raised counts the group once.

    Copies: TRL and accelerate may pickle or deepcopy reward functions. The connection is not
    copied: a copy opens its own on first call. Pickling needs ``redis`` to be a URL or
    ``None`` (a live client cannot cross a process boundary); a deepcopy shares the client.
    """

    def __new__(cls, func: Any = None, *args: Any, **kwargs: Any) -> SharedNormRewardFunc:
        async_func = cls is SharedNormRewardFunc and func is not None and _is_async(func)
        return super().__new__(_AsyncSharedNormRewardFunc if async_func else cls)

    def __init__(self, func: Callable[..., Any], env: str | None = None, redis: Any = None, *, mode: str = "zscore",
                 clip: float | None = 5.0, warmup: int = 10, eps: float = 1e-8,
                 namespace: str = "rewardnorm", on_unavailable: str = "local",
                 prompt_ids: str | None = None) -> None:
        if not callable(func):
            raise TypeError(f"func must be a reward function, got {type(func).__name__}")
        name = _callable_name(func)
        if env is None and name is None:
            raise TypeError(f"{type(func).__name__} has no __name__: pass env= to name its statistics")
        # Everything is checked now, before any call sends anything.
        NormalizerSettings.create(mode, clip, warmup, eps)
        validate_on_unavailable(on_unavailable)
        self._env = validate_env(env if env is not None else name)
        validate_namespace(namespace)
        if isinstance(redis, str):
            check_url(redis)
        elif redis is None:
            url_from_environment()
        else:
            (resolve_async_client if _is_async(func) else resolve_client)(redis)  # the right kind of client
        self._func, self._redis, self._namespace = func, redis, namespace
        self._settings = _Settings(mode=mode, clip=clip, warmup=warmup, eps=eps, on_unavailable=on_unavailable)
        self._norm: NormalizerCore | None = None
        # Async functions: one normalizer per event loop (made on first call).
        self._loops: PerLoop[AsyncSharedRewardNormalizer] | None = None
        self._ids = GroupIds()
        self._prompt_source = _validate_prompt_ids(prompt_ids)
        self._prompts: PromptStats | AsyncPromptStats | None = None
        self._gate = self._new_gate()
        self.__name__ = name if name is not None else self._env
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func

    @property
    def env(self) -> str:
        """The statistics key."""
        return self._env

    @property
    def func(self) -> Callable[..., Any]:
        """The wrapped reward function."""
        return self._func

    @property
    def normalizer(self) -> NormalizerCore | None:
        """The normalizer of the latest call (``None`` before the first); its ``stats`` are the
        shared statistics that call saw."""
        return self._norm

    def _new_gate(self) -> OutageGate:
        return OutageGate(f"prompt statistics of {self._env!r}", logger)

    @property
    def prompt_stats(self) -> PromptStats | AsyncPromptStats | None:
        """The per-prompt statistics of the latest call (``None`` without ``prompt_ids=`` or
        before the first call); on the normalizer's store."""
        return self._prompts

    def _prompt_ids(self, args: tuple[Any, ...], kwargs: dict[str, Any], positions: list[int]) -> list[str] | None:
        """The ids to record the call's rewards under, found before anything is sent (a missing
        column fails the call, not just the recording)."""
        if self._prompt_source is None or not positions:
            return None
        return _prompt_ids_of(self._prompt_source, args, kwargs, positions)

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        rewards = self._func(*args, **kwargs)
        positions, values = self._split(rewards)
        ids = self._prompt_ids(args, kwargs, positions)
        norm = self._sync_normalizer()
        normalized: list[float] = []
        if values:
            with self._ids.claim(self._env, *_group(args, kwargs, values)) as batch_id:
                normalized = norm.normalize(values, batch_id=batch_id)
                if ids is not None:
                    prompts = self._prompts
                    if not isinstance(prompts, PromptStats) or prompts.store is not norm.store:
                        prompts = self._prompts = PromptStats(self._env, norm.store,
                                                        on_unavailable=self._settings["on_unavailable"])
                    self._gate.call(lambda: prompts.update(ids, values, batch_id=batch_id), None)
        return self._finish(rewards, positions, norm, normalized, kwargs.get("log_metric"))

    def _sync_normalizer(self) -> SharedRewardNormalizer:
        norm = self._norm
        if not isinstance(norm, SharedRewardNormalizer):  # None: before the first call, or after close()
            norm = self._norm = SharedRewardNormalizer(self._env, self._redis, namespace=self._namespace,
                                                       **self._settings)
        return norm

    def _split(self, rewards: Any) -> tuple[list[int], list[Any]]:
        if not isinstance(rewards, Sequence) and not hasattr(rewards, "__len__"):
            raise TypeError(f"reward function {self.__name__} returned {type(rewards).__name__}, not a list of rewards")
        rewards = list(rewards)
        positions = [i for i, value in enumerate(rewards) if _is_reward(value)]
        return positions, [rewards[i] for i in positions]

    def _finish(self, rewards: Any, positions: list[int], norm: NormalizerCore, normalized: list[float],
                log_metric: Callable[[str, float], Any] | None) -> list[Any]:
        out = list(rewards)
        for position, value in zip(positions, normalized, strict=True):
            out[position] = value
        if callable(log_metric) and normalized and self._settings["mode"] != "none":
            for name, value in metrics_from_stats(norm.stats, f"reward_norm/{self._env}").items():
                log_metric(name, value)
        return out

    def close(self) -> None:
        """Close the connections this wrapper opened (a later call opens new ones)."""
        norm, self._norm, self._prompts = self._norm, None, None
        if isinstance(norm, SharedRewardNormalizer):
            norm.close()

    # --- copies: settings travel, connections do not -------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self._redis is not None and not isinstance(self._redis, str):
            raise TypeError(f"cannot pickle SharedNormRewardFunc({self.__name__}) holding a live "
                            f"{type(self._redis).__name__}: pass redis= as a URL (or None with "
                            "$SHARED_REWARDNORM_URL) for a reward function that crosses processes")
        state = dict(self.__dict__)
        state["_norm"] = state["_loops"] = state["_ids"] = state["_prompts"] = state["_gate"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ids = GroupIds()  # a copy's store is its own, and so are its batches
        self._gate = self._new_gate()  # and its outages

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedNormRewardFunc:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)  # the same function and client; a fresh normalizer
        copy._norm = copy._loops = copy._prompts = None
        copy._ids = GroupIds()
        copy._gate = copy._new_gate()
        copy._settings = self._settings.copy()
        memo[id(self)] = copy
        return copy

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.__name__}, env={self._env!r}, namespace={self._namespace!r}, "
                + ", ".join(f"{key}={value!r}" for key, value in self._settings.items())
                + f", prompt_ids={self._prompt_source!r})")


class _AsyncSharedNormRewardFunc(SharedNormRewardFunc):
    """``SharedNormRewardFunc`` of an ``async`` reward function: awaited, normalizing with the
    asyncio client of the event loop it runs in (TRL runs async reward functions on a loop of
    its own, in a background thread)."""

    # An incompatible override by design: TRL awaits an async reward function's result.
    async def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:  # type: ignore[override]
        rewards = await self._func(*args, **kwargs)
        positions, values = self._split(rewards)
        ids = self._prompt_ids(args, kwargs, positions)
        norm = self._async_normalizer()
        normalized: list[float] = []
        if values:
            with self._ids.claim(self._env, *_group(args, kwargs, values)) as batch_id:
                normalized = await norm.normalize(values, batch_id=batch_id)
                if ids is not None:
                    prompts = self._prompts
                    if not isinstance(prompts, AsyncPromptStats) or prompts.store is not norm.store:
                        prompts = self._prompts = AsyncPromptStats(self._env, norm.store,
                                                             on_unavailable=self._settings["on_unavailable"])
                    await self._gate.acall(lambda: prompts.update(ids, values, batch_id=batch_id), None)
        return self._finish(rewards, positions, norm, normalized, kwargs.get("log_metric"))

    def _async_normalizer(self) -> AsyncSharedRewardNormalizer:
        if self._loops is None:
            self._loops = PerLoop(lambda: AsyncSharedRewardNormalizer(
                self._env, self._redis, namespace=self._namespace, **self._settings))
        self._norm = self._loops.get()
        return self._norm

    async def aclose(self) -> None:
        """Close the connections this wrapper opened, inside the loop that used them."""
        loops, self._loops, self._norm, self._prompts = self._loops, None, None, None
        if loops is not None:
            await loops.aclose()
