"""Shared reward normalization for verl's reward loop (the ``verl`` extra).

verl 0.9 scores one trajectory at a time: each ``RewardLoopWorker`` (a Ray actor; there are
``reward.num_workers`` of them) calls its reward manager's ``async run_single`` for the
trajectories the agent loop sends it, picked at random. No worker sees a batch, so statistics
kept per worker disagree; ``SharedNormRewardManager`` keeps them in Redis, shared by every
worker of every node::

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=pkg://shared_rewardnorm.verl
    reward.reward_manager.name=SharedNormRewardManager
    +reward.shared_rewardnorm.url=redis://redis-host:6379/0
    +reward.shared_rewardnorm.inner=naive

It builds the wrapped (``inner``) manager with the constructor arguments verl gave it, awaits
its ``run_single``, and replaces ``reward_score`` with the score normalized against the shared
statistics of the sample's env (its ``data_source`` by default). The raw score is kept in
``reward_extra_info["raw_score"]``. The options and what they mean are in ``VerlOptions``.

The paths it covers and refuses are in ``SharedNormRewardManager``'s docstring.
"""

# No ``from __future__ import annotations``: verl may load this file by path without putting it
# in ``sys.modules`` (``load_module("file://...")``), where ``dataclass`` cannot resolve string
# annotations.
import logging
from dataclasses import dataclass, fields
from typing import Any

from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.experimental.reward_loop.reward_manager.registry import get_reward_manager_cls, register

from shared_rewardnorm._core.inputs import validate_env, validate_namespace
from shared_rewardnorm._core.normalization import NormalizerSettings
from shared_rewardnorm._core.outage import validate_on_unavailable
from shared_rewardnorm._redis.connection import check_url, url_from_environment
from shared_rewardnorm.integrations.batch_ids import GroupIds
from shared_rewardnorm.integrations.loops import EnvNormalizers, PerLoop

__all__ = ["REGISTERED_NAME", "SharedNormRewardManager", "VerlOptions"]

logger = logging.getLogger("shared_rewardnorm.verl")

#: The name under which importing this module registers the manager with verl's registry
#: (``reward.reward_manager.source=register``): usable only in processes that import it.
REGISTERED_NAME = "shared_rewardnorm"
#: Where the options live in verl's config.
CONFIG_KEY = "shared_rewardnorm"


@dataclass(frozen=True)
class VerlOptions:
    """``reward.shared_rewardnorm`` in verl's config (every key optional).

    Attributes:
        inner: the registered name of the manager whose scores are normalized (``naive``,
            ``dapo``, ``gdpo``, ``limited``, ``remote`` or one registered by the user).
        url: the Redis URL; ``None``: ``$SHARED_REWARDNORM_URL`` in the worker, else the
            embedded store, local to each worker (logged as a warning: the statistics are then
            not shared).
        namespace: the key prefix (runs sharing statistics use the same one).
        mode, clip, warmup, eps, statistics: as for ``SharedRewardNormalizer``.
        on_unavailable: as for ``SharedRewardNormalizer``, but ``"local"`` by default: a store
            outage never fails a reward computation (scores are normalized against the
            worker's last shared view meanwhile, and merged once the store is back).
        env_key: the field of the sample's ``non_tensor_batch`` naming its env.
        env: one env name for every sample instead (``env_key`` is then not read).
    """

    inner: str = "naive"
    url: str | None = None
    namespace: str = "rewardnorm"
    mode: str = "zscore"
    clip: float | None = 5.0
    warmup: int = 10
    eps: float = 1e-8
    statistics: str = "total"
    on_unavailable: str = "local"
    env_key: str = "data_source"
    env: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> "VerlOptions":
        """The options under ``config.reward.shared_rewardnorm`` (absent: the defaults),
        checked: an unknown key or a bad value is a ``ValueError``/``TypeError`` naming it."""
        reward = config.get("reward") if hasattr(config, "get") else None
        section = reward.get(CONFIG_KEY) if reward is not None else None
        given = dict(section.items()) if section is not None else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"reward.{CONFIG_KEY} has unknown options {unknown}; known: {sorted(known)}")
        options = cls(**given)
        options.check()
        return options

    def check(self) -> None:
        for name in ("inner", "env_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"reward.{CONFIG_KEY}.{name} must be a non-empty str, got {value!r}")
        if self.url is not None:
            if not isinstance(self.url, str):
                raise TypeError(f"reward.{CONFIG_KEY}.url must be a str, got {type(self.url).__name__}")
            check_url(self.url, source=f"reward.{CONFIG_KEY}.url")
        validate_namespace(self.namespace)
        if self.env is not None:
            validate_env(self.env)
        NormalizerSettings.create(self.mode, self.clip, self.warmup, self.eps, self.statistics)
        validate_on_unavailable(self.on_unavailable)


def _refuse_uncovered_paths(config: Any) -> None:
    """Refuse the verl paths on which normalizing in the reward manager would be wrong or void."""
    reward = config.get("reward")
    rm = reward.get("reward_model") if reward is not None else None
    if rm is None or not rm.get("enable", False):
        return
    custom = (reward.get("custom_reward_function") or {}).get("path")
    if not rm.get("enable_resource_pool", False):
        raise ValueError(
            "SharedNormRewardManager does not support the colocated reward model "
            "(reward.reward_model.enable=True with enable_resource_pool=False): verl then scores the whole "
            "batch through RewardLoopManager.compute_rm_score, which pads it to a multiple of reward.num_workers "
            "and scores the padded copies too, so they would be counted in the shared statistics. Give the "
            "reward model its own resource pool (reward.reward_model.enable_resource_pool=True) so trajectories "
            "are scored one by one in the agent loop, or normalize without a reward model")
    if custom is None:
        raise ValueError(
            "SharedNormRewardManager is never called with reward.reward_model.enable=True and no "
            "reward.custom_reward_function.path: verl's RewardLoopWorker then scores with the reward model "
            "directly (compute_score_disrm), bypassing the reward manager, so nothing would be normalized")


def _sample_value(data: Any, key: str) -> Any:
    value = data.non_tensor_batch.get(key) if data.non_tensor_batch is not None else None
    if value is None:
        return None
    return value[-1] if len(value) else None  # verl scores the last of a trajectory's outputs


class SharedNormRewardManager(RewardManagerBase):  # type: ignore[misc]  # verl ships no types
    """verl reward manager normalizing the wrapped manager's scores against shared statistics.

    Covered: verl's reward loop, where trajectories are scored one at a time by
    ``RewardLoopWorker.compute_score`` (the agent loop's streaming reward, rule-based or with a
    reward model on its own resource pool and a custom reward function) and
    ``RewardLoopWorker.compute_score_batch`` called directly. Refused at construction (a
    ``ValueError`` saying why): the colocated reward model, whose batches are padded with copies
    that would be counted, and a reward model without a custom reward function, which never
    calls the manager. Validation rollouts go through the same workers and are counted and
    normalized like training ones (verl gives the manager no way to tell them apart).

    Each trajectory's batch id is a digest of its ``uid`` (verl's id of the prompt, shared by
    the prompt's ``n`` rollouts), its ``index``, its prompt and response token ids and its raw
    score, numbered among identical trajectories (``integrations.batch_ids``): a retry of the
    same trajectory is counted once, two identical rollouts twice.

    One coalescing asyncio store per event loop (``loops.PerLoop``): the trajectories a worker
    scores concurrently share one script call per env.
    """

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, **kwargs: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.options = VerlOptions.from_config(config)
        _refuse_uncovered_paths(config)
        inner_cls = get_reward_manager_cls(self.options.inner)
        if issubclass(inner_cls, SharedNormRewardManager):
            raise ValueError(f"reward.{CONFIG_KEY}.inner={self.options.inner!r} is SharedNormRewardManager "
                             "itself: name the manager whose scores it normalizes (default naive)")
        # The inner manager gets exactly what verl's load_reward_manager gave this one.
        self.inner = inner_cls(config=config, tokenizer=tokenizer, compute_score=compute_score, **kwargs)
        if self.options.url is None:
            url_from_environment()  # a malformed $SHARED_REWARDNORM_URL fails here, not at the first score
        o = self.options
        self._loops: PerLoop[EnvNormalizers] = PerLoop(lambda: EnvNormalizers(
            o.url, o.namespace, mode=o.mode, clip=o.clip, warmup=o.warmup, eps=o.eps, statistics=o.statistics,
            on_unavailable=o.on_unavailable))
        self._ids = GroupIds()

    def env_of(self, data: Any) -> str:
        """The statistics key of the sample ``data`` (``env``, else its ``env_key`` field)."""
        if self.options.env is not None:
            return self.options.env
        value = _sample_value(data, self.options.env_key)
        if value is None:
            raise ValueError(f"the sample has no {self.options.env_key!r} in its non_tensor_batch to name its env; "
                             f"set reward.{CONFIG_KEY}.env_key to a field it has, or reward.{CONFIG_KEY}.env")
        return validate_env(str(value))

    @property
    def normalizers(self) -> EnvNormalizers | None:
        """The current event loop's store and normalizers (``None`` before the first score)."""
        return self._loops.current

    async def run_single(self, data: Any) -> dict[str, Any]:
        result = await self.inner.run_single(data)
        raw = result["reward_score"]
        if hasattr(raw, "item"):  # a numpy or torch scalar; anything else is the normalizer's to check
            raw = raw.item()
        env = self.env_of(data)
        normalized = await self._normalize(env, raw, data)
        extra = dict(result.get("reward_extra_info") or {})
        # verl stacks every sample's reward_extra_info under the first sample's keys: the same
        # key on every sample.
        extra["raw_score"] = raw
        return {**result, "reward_score": normalized, "reward_extra_info": extra}

    async def _normalize(self, env: str, raw: Any, data: Any) -> float:
        """The one place a score meets the store (an outage policy goes here)."""
        norm = self._loops.get().normalizer(env)
        tokens = [data.batch.get(key, None) if data.batch is not None else None for key in ("prompts", "responses")]
        parts = [_sample_value(data, "uid"), _sample_value(data, "index"), *tokens, raw]
        with self._ids.claim(env, *parts) as batch_id:
            (value,) = await norm.normalize([raw], batch_id=batch_id)
        return value

    async def aclose(self) -> None:
        """Close this loop's connections (a later score opens new ones)."""
        await self._loops.aclose()


def _register() -> None:
    """Register under ``REGISTERED_NAME``, once per process: a second import of this file (verl
    loading it by file path, a reload) makes a second class, which verl's ``register`` would
    refuse; the first one stays registered (they are the same code)."""
    try:
        existing = get_reward_manager_cls(REGISTERED_NAME)
    except ValueError:
        register(REGISTERED_NAME)(SharedNormRewardManager)
        return
    if existing.__qualname__ != SharedNormRewardManager.__qualname__ or not issubclass(existing, RewardManagerBase):
        raise ValueError(f"verl reward manager name {REGISTERED_NAME!r} is already taken by {existing!r}")


_register()
