"""Shared reward normalization for Atropos environments (the ``atropos`` extra).

The reference normalizer was written for Atropos's ``BaseEnv``: three opt-in config fields, each
scored group's ``scores`` replaced by ``normalize(scores)``, groups that collapse after
normalization skipped, and ``metrics_dict()`` merged into the env's WandB metrics. This module
is that integration, with the statistics shared by every replica of the env (every process,
every node) through Redis instead of kept per process::

    from atroposlib.envs.base import BaseEnv
    from shared_rewardnorm.atropos import SharedRewardNormConfig, SharedRewardNormMixin

    class MyEnv(SharedRewardNormMixin, BaseEnv):      # the mixin first
        name = "my_env"                               # the statistics key (not wandb_name)
        env_config_cls = SharedRewardNormConfig

    # python my_env.py serve --env.reward_normalization zscore --env.reward_norm_redis_url redis://...

Every scored group reaches the trainer through ``BaseEnv.handle_send_to_api``, from ``serve``
and from ``process`` alike, so that is the one place the mixin hooks; ``wandb_log`` gets the
shared statistics' metrics.

With ``reward_norm_prompt_stats`` on, the same hook also records each group's raw scores under
its item's id (``prompt_id_of``) in the env's ``AsyncPromptStats``, and ``keep_prompt`` /
``select_prompts`` let ``get_next_item`` skip prompts outside a difficulty range, from what every
replica recorded.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import redis
from atroposlib.envs.base import BaseEnv, BaseEnvConfig
from pydantic import Field, field_validator, model_validator

from shared_rewardnorm._core.inputs import validate_env, validate_namespace
from shared_rewardnorm._core.normalization import NormalizerSettings
from shared_rewardnorm._core.prompt_ops import validate_prompt_ids
from shared_rewardnorm._redis.connection import URL_VARIABLE, check_url
from shared_rewardnorm.aio import AsyncSharedRewardNormalizer, AsyncStatsStore
from shared_rewardnorm.aio.prompts import AsyncPromptStats
from shared_rewardnorm.errors import RewardNormError
from shared_rewardnorm.integrations.batch_ids import GroupIds
from shared_rewardnorm.integrations.loops import PerLoop
from shared_rewardnorm.integrations.prompt_ids import OutageGate, hash_id

__all__ = ["SharedRewardNormConfig", "SharedRewardNormMixin"]

# Named by the public import path, which is what users configure logging for.
logger = logging.getLogger("shared_rewardnorm.atropos")


class SharedRewardNormConfig(BaseEnvConfig):
    """``BaseEnvConfig`` plus the reference's three fields (same names and defaults) and where
    the shared statistics live. Every field is also an ``--env.<field>`` option of the env's
    CLI, since Atropos builds its CLI from the config class ``config_init`` returns."""

    reward_normalization: Literal["none", "zscore", "minmax"] = Field(
        default="none",
        description="Reward normalization: 'none' (scores untouched, nothing recorded), 'zscore' or 'minmax', "
                    "against running statistics shared by every replica of this env",
    )
    reward_clip: float = Field(
        default=5.0, ge=0, description="Clip normalized scores to +/- this value; 0 disables clipping")
    reward_normalization_warmup: int = Field(
        default=10, ge=0,
        description="Scores (samples, not groups; counted over every replica) before normalization starts; "
                    "until then raw scores are passed on, clipped")
    reward_norm_redis_url: str | None = Field(
        default=None,
        description=f"Redis URL holding the shared statistics; default ${URL_VARIABLE}, else an embedded "
                    "store local to this process (logged as a warning)")
    reward_norm_namespace: str = Field(
        default="rewardnorm", description="Key prefix: replicas share statistics within one namespace")
    reward_norm_on_unavailable: Literal["local", "raise"] = Field(
        default="local",
        description="When the store cannot be reached: 'local' normalizes against the last shared statistics "
                    "plus the scores seen since, and merges those once the store answers again (a store "
                    "outage never ends a rollout); 'raise' raises StoreUnavailableError")
    reward_norm_env: str | None = Field(
        default=None,
        description="Statistics key of this env; default the env class's name (never wandb_name, which the "
                    "API server suffixes per replica)")
    reward_norm_prompt_stats: bool = Field(
        default=False,
        description="Also record each scored group's raw scores per prompt (AsyncPromptStats of the same env, "
                    "store and namespace), under the item's id (prompt_id_of: a hash of repr(item) unless the "
                    "env overrides it), for keep_prompt/select_prompts; works with reward_normalization='none' "
                    "too. A store outage skips the recording, never the group")

    @field_validator("reward_norm_redis_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None:
            check_url(url, source="reward_norm_redis_url")
        return url

    @field_validator("reward_norm_namespace")
    @classmethod
    def _namespace(cls, namespace: str) -> str:
        return validate_namespace(namespace)

    @field_validator("reward_norm_env")
    @classmethod
    def _env(cls, env: str | None) -> str | None:
        return None if env is None else validate_env(env)

    @model_validator(mode="after")
    def _settings(self) -> SharedRewardNormConfig:
        # The normalizer's own checks, so a bad setting fails when the config is built.
        NormalizerSettings.create(self.reward_normalization, self.reward_clip, self.reward_normalization_warmup)
        return self


class SharedRewardNormMixin:
    """Normalizes every scored group's ``scores`` against statistics shared by all replicas.

    List it before ``BaseEnv`` (``class MyEnv(SharedRewardNormMixin, BaseEnv)``) and use
    ``SharedRewardNormConfig`` (or a subclass) as the env's config. With
    ``reward_normalization="none"`` (the default) nothing changes and nothing is recorded.

    What counts: only groups that ``BaseEnv`` would pass on (the expected group size, tokens
    within ``max_token_len`` when that check is on) enter the statistics, one round trip per
    group. A group whose normalized scores are all equal (say, every score clipped to the same
    bound) is then skipped by ``BaseEnv``'s ``ensure_scores_are_not_same`` check, as the
    reference did; groups whose raw scores are all equal still count in the statistics (they
    are real rewards of the env) and are skipped as before.

    Each group's batch id is a digest of its token ids and raw scores, numbered among identical
    groups (``integrations.batch_ids``): a group sent again after a call that raised (the same
    tokens and scores) is counted once, two identical groups twice.

    Per-prompt statistics (``reward_norm_prompt_stats=True``): each counted group's raw scores
    go to ``AsyncPromptStats(env).update([prompt_id_of(item)] * n, scores, batch_id=<the group's
    batch id>)``, after its normalization; ``keep_prompt``/``select_prompts`` read them back.
    """

    config: SharedRewardNormConfig
    name: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if BaseEnv in mro and mro.index(BaseEnv) < mro.index(SharedRewardNormMixin):
            raise TypeError(f"{cls.__name__}: list SharedRewardNormMixin before BaseEnv in its bases, or "
                            "BaseEnv's handle_send_to_api runs instead of the mixin's")

    def __init__(self, config: SharedRewardNormConfig, *args: Any, **kwargs: Any) -> None:
        if not isinstance(config, SharedRewardNormConfig):
            raise TypeError(f"{type(self).__name__} needs a SharedRewardNormConfig (set env_config_cls and "
                            f"return one from config_init), got {type(config).__name__}")
        validate_env(self._reward_norm_env_name(config))
        if config.wandb_name is None and type(self).name is not None:
            # atroposlib 0.4.0's ``serve`` gives its default wandb_name (the env class's name) to
            # its CLI model, not to the env config it builds, so the env would register with the
            # API server as desired_name=null, be refused (422) and exit. Give the config the
            # default serve meant to give it (an explicit --env.wandb_name still wins).
            config = config.model_copy(update={"wandb_name": type(self).name})
        self._reward_norm_loops: PerLoop[AsyncSharedRewardNormalizer] = PerLoop(self._make_reward_normalizer)
        self._reward_norm_ids = GroupIds()
        # Without a normalizer (reward_normalization="none"), the prompt statistics' own store.
        self._reward_norm_stores: PerLoop[AsyncStatsStore] = PerLoop(self._make_prompt_store)
        self._reward_norm_prompts: AsyncPromptStats | None = None
        self._reward_norm_gate = OutageGate(f"prompt statistics of {self._reward_norm_env_name(config)!r}", logger)
        # A mixin: super() is BaseEnv at run time (the MRO check above), object to mypy.
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]

    def _reward_norm_env_name(self, config: SharedRewardNormConfig) -> str:
        return config.reward_norm_env or type(self).name or type(self).__name__

    @property
    def reward_norm_env(self) -> str:
        """The env name the shared statistics are kept under."""
        return self._reward_norm_env_name(self.config)

    @property
    def reward_normalizer(self) -> AsyncSharedRewardNormalizer | None:
        """The shared normalizer, or ``None`` when ``reward_normalization`` is ``"none"``.

        Created on first use inside the running event loop (an asyncio client belongs to the
        loop it first ran in), and again if the env is later driven by another loop (the old
        one is closed in its loop if that still runs, else dropped: see ``loops.PerLoop``).
        """
        if self.config.reward_normalization == "none":
            return None
        return self._reward_norm_loops.get()

    def _make_reward_normalizer(self) -> AsyncSharedRewardNormalizer:
        config = self.config
        return AsyncSharedRewardNormalizer(
            self.reward_norm_env, config.reward_norm_redis_url, mode=config.reward_normalization,
            clip=config.reward_clip, warmup=config.reward_normalization_warmup,
            namespace=config.reward_norm_namespace, on_unavailable=config.reward_norm_on_unavailable)

    async def close_reward_normalizer(self) -> None:
        """Close the shared normalizer's connections, and the prompt statistics' (before the
        event loop that used them ends); a later use opens new ones."""
        self._reward_norm_prompts = None  # it runs on one of the stores closed here
        await self._reward_norm_stores.aclose()
        await self._reward_norm_loops.aclose()

    # --- per-prompt statistics ------------------------------------------------------------------

    def _make_prompt_store(self) -> AsyncStatsStore:
        return AsyncStatsStore(self.config.reward_norm_redis_url, self.config.reward_norm_namespace)

    @property
    def prompt_stats(self) -> AsyncPromptStats | None:
        """The env's per-prompt statistics, or ``None`` when ``reward_norm_prompt_stats`` is off.

        They run on the normalizer's store (the same Redis, namespace, retries and event loop)
        or, with ``reward_normalization="none"``, on a store of their own made the same way, with
        ``reward_norm_on_unavailable`` too: with ``"local"`` an outage's groups are kept and
        recorded once the store answers."""
        if not self.config.reward_norm_prompt_stats:
            return None
        norm = self.reward_normalizer
        store = norm.store if norm is not None else self._reward_norm_stores.get()
        prompts = self._reward_norm_prompts
        if prompts is None or prompts.store is not store:  # first use, or another event loop
            prompts = self._reward_norm_prompts = AsyncPromptStats(
                self.reward_norm_env, store, on_unavailable=self.config.reward_norm_on_unavailable)
        return prompts

    def prompt_id_of(self, item: Any) -> str | None:
        """The prompt id under which the groups of ``item`` are recorded (``None``: not recorded).

        By default a digest of ``repr(item)`` (``integrations.prompt_ids.hash_id``), the same on
        every replica for equal items. Override it when items carry an id of their own (a dataset
        index: ``return str(item["idx"])``) or when their ``repr`` is not stable (it holds a memory
        address). ``BaseEnv`` passes ``item`` with every group; a group sent without one
        (``item=None``) is not recorded."""
        return None if item is None else hash_id(item)

    async def select_prompts(self, prompt_ids: Any, *, low: float = 0.0, high: float = 1.0) -> list[str]:
        """The distinct ``prompt_ids`` (first-seen order) worth a rollout: those whose mean raw
        score, over every replica's groups, lies strictly between ``low`` and ``high``, and those
        never seen (``AsyncPromptStats.select``). The defaults drop prompts every group so far
        solved (mean 1) or failed (mean 0) with pass/fail scores. Every id is kept when
        ``reward_norm_prompt_stats`` is off or the store cannot be read (logged once per outage)."""
        ids = list(dict.fromkeys(prompt_ids))
        prompts = self.prompt_stats
        if prompts is None:
            return ids
        return await self._reward_norm_gate.acall(lambda: prompts.select(ids, low=low, high=high), ids)

    async def keep_prompt(self, prompt_id: str, *, low: float = 0.0, high: float = 1.0) -> bool:
        """Whether one prompt is worth a rollout (see ``select_prompts``), for a ``get_next_item``
        that draws prompts one at a time::

            async def get_next_item(self):
                while True:
                    item = self.next_from_dataset()
                    if await self.keep_prompt(self.prompt_id_of(item), low=0.0, high=1.0):
                        return item
        """
        return bool(await self.select_prompts([prompt_id], low=low, high=high))

    async def _record_prompt(self, prompt_id: str, scores: list[float], batch_id: str) -> None:
        """One group's raw scores under its prompt, best effort (see ``OutageGate``)."""
        prompts = self.prompt_stats
        if prompts is not None:
            await self._reward_norm_gate.acall(
                lambda: prompts.update([prompt_id] * len(scores), scores, batch_id=batch_id), None)

    def _passes_base_env_checks(self, group: Any, abort_on_any_max_length_exceeded: bool) -> bool:
        """Whether ``BaseEnv.handle_send_to_api`` keeps ``group`` (before its equal-scores check):
        the groups it drops must not enter the statistics either. The expressions are BaseEnv's
        (atroposlib 0.4.0), failures included: ``group_overrides=None`` raises its
        ``AttributeError`` here too."""
        if group is None:
            return False
        group_size = group.get("group_overrides", {}).get("group_size", self.config.group_size)
        if None in group or len(group.get("tokens", [])) != group_size or "scores" not in group:
            return False
        max_len = getattr(self, "max_token_len", -1)
        return not (abort_on_any_max_length_exceeded and max_len > 0
                    and any(len(tokens) >= max_len for tokens in group["tokens"]))

    async def handle_send_to_api(self, scored_data: Any, item: Any = None, do_send_to_api: bool = True,
                                 abort_on_any_max_length_exceeded: bool = True) -> Any:
        """Replace each complete group's ``scores`` with the shared normalization of them, then
        hand the groups to ``BaseEnv.handle_send_to_api`` (the API, or the JSONL file in
        ``process`` mode). If the store stays unreachable after the store's retries, the
        default ``reward_norm_on_unavailable="local"`` normalizes against the last shared
        statistics plus the scores seen since (merged once the store answers); with ``"raise"``
        the error propagates (``BaseEnv.handle_env`` logs it) and nothing is sent: raw scores
        never go out in place of normalized ones. With ``reward_norm_prompt_stats``, each
        counted group's raw scores are then recorded under ``prompt_id_of(item)``, with the
        group's batch id; a store failure there is logged and skipped (``OutageGate``)."""
        norm = self.reward_normalizer
        prompt_id = self.prompt_id_of(item) if self.config.reward_norm_prompt_stats else None
        if prompt_id is not None:  # a bad id fails the group before anything is counted
            validate_prompt_ids([prompt_id], f"{type(self).__name__}.prompt_id_of(item)")
        if norm is not None or prompt_id is not None:
            groups = scored_data if isinstance(scored_data, list) else [scored_data]
            # Every group is checked before any is counted: a group that makes BaseEnv raise
            # (so that it sends nothing) raises here first, and nothing enters the statistics.
            kept = [group for group in groups if self._passes_base_env_checks(group, abort_on_any_max_length_exceeded)]
            for group in kept:
                raw = list(group["scores"])
                with self._reward_norm_ids.claim(self.reward_norm_env, group["tokens"], raw) as batch_id:
                    if norm is not None:
                        group["scores"] = await norm.normalize(raw, batch_id=batch_id)
                    if prompt_id is not None:
                        await self._record_prompt(prompt_id, raw, batch_id)
        # BaseEnv's method (the mixin comes first in the MRO), which object lacks as far as mypy sees.
        return await super().handle_send_to_api(  # type: ignore[misc]
            scored_data, item, do_send_to_api, abort_on_any_max_length_exceeded)

    async def wandb_log(self, wandb_metrics: dict[str, Any] | None = None) -> None:
        """Add the shared statistics (``reward_norm/count|mean|std|min|max``, the reference's
        keys) to this step's metrics. If the store cannot be read, the step is logged without
        them and a warning says why: metrics must not stop an env that is otherwise running."""
        wandb_metrics = dict(wandb_metrics or {})
        norm = self.reward_normalizer
        if norm is not None:
            try:
                wandb_metrics.update(await norm.metrics_dict())
            except (redis.RedisError, RewardNormError) as exc:  # RewardNormError: a corrupt hash, say
                logger.warning("reward_norm metrics for %r not logged this step: %s", self.reward_norm_env, exc)
        await super().wandb_log(wandb_metrics)  # type: ignore[misc]  # BaseEnv's, as in handle_send_to_api

