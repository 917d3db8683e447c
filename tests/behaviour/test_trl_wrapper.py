"""``SharedNormRewardFunc`` without TRL: TRL's calling convention, played here on every backend
(tests/integrations/test_trl.py runs it inside a real ``GRPOTrainer``)."""

from __future__ import annotations

import asyncio
import copy
import functools
import math
import pickle
from typing import Any

import numpy as np
import pytest
import redis

from shared_rewardnorm import StatsStore
from shared_rewardnorm._redis.connection import URL_VARIABLE
from shared_rewardnorm.trl import SharedNormRewardFunc
from tests.support.helpers import in_loop
from tests.support.reference_oracle import OracleNormalizer

PROMPTS = ["p"] * 4


def length_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """Characters in the completion; None for an empty one (no reward)."""
    return [float(len(c)) if c else None for c in completions]


async def async_length_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    await asyncio.sleep(0)
    return length_reward(prompts, completions)


def nan_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [math.nan if c == "skip" else float(len(c)) for c in completions]


def as_url(backend: Any) -> str | None:
    """The backend as something picklable: None, or the real server's URL."""
    if backend is None:
        return None
    kwargs = backend.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_keeps_the_name_and_normalizes_like_the_reference(backend: Any, namespace: str) -> None:
    wrapped = SharedNormRewardFunc(length_reward, redis=backend, namespace=namespace, warmup=3, clip=2.0)
    assert wrapped.__name__ == "length_reward" and wrapped.env == "length_reward"
    oracle = OracleNormalizer(warmup=3, clip=2.0)
    for completions in (["a", "bbb", "cc", "dddddd"], ["xxxxxxxxxxxxxxxx", "y", "zz", "w"]):
        assert wrapped(prompts=PROMPTS, completions=completions) == pytest.approx(
            oracle.normalize([float(len(c)) for c in completions]), rel=1e-9, abs=1e-9)
    assert StatsStore(backend, namespace).get("length_reward").count == 8
    wrapped.close()


def test_none_and_nan_pass_through_uncounted(backend: Any, namespace: str) -> None:
    wrapped = SharedNormRewardFunc(length_reward, redis=backend, namespace=namespace, warmup=0, clip=0)
    out = wrapped(prompts=PROMPTS, completions=["aa", "", "aaaa", ""])
    assert out[1] is None and out[3] is None
    assert out[0] == pytest.approx(-1.0) and out[2] == pytest.approx(1.0)
    nans = SharedNormRewardFunc(nan_reward, redis=backend, namespace=namespace, warmup=0, clip=0)
    out = nans(prompts=PROMPTS, completions=["skip", "a", "skip", "aaa"])
    assert math.isnan(out[0]) and math.isnan(out[2])
    store = StatsStore(backend, namespace)
    assert store.get("length_reward").count == 2 and store.get("nan_reward").count == 2
    wrapped.close()
    nans.close()


class TensorLike:
    """What a torch 0-d tensor does that matters here: ``!=`` gives an object with a truth
    value, not a ``bool``, and ``float()`` works."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __ne__(self, other: object) -> Any:
        return np.bool_(not self.value == getattr(other, "value", other))

    def __float__(self) -> float:
        return self.value


@pytest.mark.parametrize("nan", [np.float32("nan"), np.float64("nan"), TensorLike(math.nan)],
                         ids=["float32", "float64", "tensor-like"])
def test_nan_of_any_numeric_type_passes_through_uncounted(backend: Any, namespace: str, nan: Any) -> None:
    def rewards(prompts: list[str], completions: list[str], **kwargs: Any) -> list[Any]:
        return [nan if c == "skip" else np.float32(len(c)) for c in completions]

    wrapped = SharedNormRewardFunc(rewards, redis=backend, namespace=namespace, warmup=0, clip=0)
    out = wrapped(prompts=PROMPTS, completions=["skip", "a", "skip", "aaa"])
    assert out[0] is nan and out[2] is nan and out[1] == pytest.approx(-1.0) and out[3] == pytest.approx(1.0)
    assert StatsStore(backend, namespace).get("rewards").count == 2
    wrapped.close()


def test_reports_through_log_metric(backend: Any, namespace: str) -> None:
    logged: dict[str, float] = {}
    wrapped = SharedNormRewardFunc(length_reward, redis=backend, namespace=namespace, env="len")
    wrapped(prompts=PROMPTS, completions=["a", "bb", "ccc", "dddd"], log_metric=logged.__setitem__)
    assert logged == {"reward_norm/len/count": 4.0, "reward_norm/len/mean": 2.5,
                      "reward_norm/len/std": pytest.approx(math.sqrt(1.25)),
                      "reward_norm/len/min": 1.0, "reward_norm/len/max": 4.0}
    wrapped.close()


def test_an_async_reward_function_gives_an_awaitable_wrapper(backend: Any, namespace: str) -> None:
    url = as_url(backend)
    wrapped = SharedNormRewardFunc(async_length_reward, redis=url, namespace=namespace, warmup=0)
    assert asyncio.iscoroutinefunction(type(wrapped).__call__)

    async def main() -> list[Any]:
        try:
            return await wrapped(prompts=PROMPTS, completions=["a", "", "ccc", "bb"])
        finally:
            await wrapped.aclose()

    out = asyncio.run(main())
    assert out[1] is None and out[0] == pytest.approx(-math.sqrt(1.5)) and out[3] == pytest.approx(0.0)
    assert StatsStore(backend, namespace).get("async_length_reward").count == 3


def test_survives_pickle_and_deepcopy(backend: Any, namespace: str) -> None:
    """A copy reconnects on its first call and adds to the same statistics."""
    wrapped = SharedNormRewardFunc(length_reward, redis=as_url(backend), namespace=namespace, warmup=0)
    wrapped(prompts=PROMPTS, completions=["a", "bb", "ccc", "dddd"])  # connected now
    for twin in (pickle.loads(pickle.dumps(wrapped)), copy.deepcopy(wrapped)):
        assert twin.__name__ == "length_reward" and twin.normalizer is None
        twin(prompts=PROMPTS, completions=["a", "bb", "ccc", "dddd"])
        twin.close()
    assert StatsStore(backend, namespace).get("length_reward").count == 12
    assert pickle.loads(pickle.dumps(SharedNormRewardFunc(async_length_reward))).__class__ is type(
        SharedNormRewardFunc(async_length_reward))
    wrapped.close()


def test_a_live_client_is_shared_by_deepcopy_but_not_pickled(namespace: str) -> None:
    client = redis.Redis()  # never connected: only copied
    wrapped = SharedNormRewardFunc(length_reward, redis=client, namespace=namespace)
    assert copy.deepcopy(wrapped)._redis is client
    with pytest.raises(TypeError, match=r"cannot pickle SharedNormRewardFunc\(length_reward\).*pass redis= as a URL"):
        pickle.dumps(wrapped)
    client.close()


def test_partials_and_explicit_env_names() -> None:
    partial = functools.partial(length_reward, scale=2)
    assert SharedNormRewardFunc(partial).__name__ == "length_reward"

    class Scorer:
        def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
            return [1.0] * len(completions)

    with pytest.raises(TypeError, match="Scorer has no __name__: pass env="):
        SharedNormRewardFunc(Scorer())
    assert SharedNormRewardFunc(Scorer(), env="scorer").__name__ == "scorer"


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"mode": "l1"}, ValueError, "invalid normalization mode 'l1'"),
    ({"warmup": 2.5}, TypeError, "warmup must be an int"),
    ({"env": "a{b}"}, ValueError, r"env name 'a\{b\}' contains '\{'"),
    ({"namespace": ""}, ValueError, "namespace must not be empty"),
    ({"redis": "localhost:6379"}, ValueError, "redis URL must start with redis://"),
    ({"redis": 6379}, TypeError, "redis must be a redis.Redis"),
])
def test_bad_settings_fail_at_construction(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        SharedNormRewardFunc(length_reward, **kwargs)


def test_a_sync_client_for_an_async_function_is_refused() -> None:
    client = redis.Redis()
    with pytest.raises(TypeError, match="blocking client"):
        SharedNormRewardFunc(async_length_reward, redis=client)
    client.close()


def test_a_malformed_variable_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_VARIABLE, "localhost")
    with pytest.raises(ValueError, match=r"\$SHARED_REWARDNORM_URL must start with redis://"):
        SharedNormRewardFunc(length_reward)


@pytest.mark.real_redis
def test_none_follows_the_url_variable(monkeypatch: pytest.MonkeyPatch, real_redis_url: str, real_client: Any,
                                       namespace: str) -> None:
    """The wrapper resolves ``redis=None`` like the library: ``$SHARED_REWARDNORM_URL`` first,
    also in a pickled copy (which resolves it again where it is unpickled)."""
    monkeypatch.setenv(URL_VARIABLE, real_redis_url)
    wrapped = pickle.loads(pickle.dumps(SharedNormRewardFunc(length_reward, namespace=namespace)))
    wrapped(prompts=PROMPTS, completions=["a", "bb", "ccc", "dddd"])
    assert StatsStore(real_client, namespace).get("length_reward").count == 4
    wrapped.close()


def test_each_call_passes_a_batch_id_of_its_step_prompts_completions_and_rewards(
        backend: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that raised after its merge landed (a lost reply), made again with the same
    inputs, counts once; an identical call after a success is a new group and counts again."""
    from types import SimpleNamespace

    from shared_rewardnorm.sync import SharedRewardNormalizer

    original = SharedRewardNormalizer.normalize
    sent: list[object] = []
    lose_reply = [True]

    def normalize(self: SharedRewardNormalizer, scores: Any, update: bool = True, *,
                  batch_id: str | int | None = None) -> list[float]:
        sent.append(batch_id)
        out = original(self, scores, update, batch_id=batch_id)
        if lose_reply.pop() if lose_reply else False:
            raise redis.ConnectionError("reply lost after the merge landed")
        return out

    monkeypatch.setattr(SharedRewardNormalizer, "normalize", normalize)
    wrapped = SharedNormRewardFunc(length_reward, redis=backend, namespace=namespace, warmup=0)
    step = SimpleNamespace(global_step=3)
    completions = ["a", "bb", "ccc", "dddd"]
    with pytest.raises(redis.ConnectionError):
        wrapped(prompts=PROMPTS, completions=completions, trainer_state=step)
    wrapped(prompts=PROMPTS, completions=completions, trainer_state=step)
    store = StatsStore(backend, namespace)
    assert store.get("length_reward").count == 4
    wrapped(prompts=PROMPTS, completions=completions, trainer_state=step)
    assert store.get("length_reward").count == 8
    wrapped(prompts=PROMPTS, completions=completions, trainer_state=SimpleNamespace(global_step=4))
    assert store.get("length_reward").count == 12
    assert sent[0] == sent[1] and sent[2] != sent[1] and sent[2][:-2] == sent[1][:-2]  # type: ignore[index]
    assert sent[3][:-2] != sent[1][:-2]  # type: ignore[index]  # another step, another digest
    wrapped.close()


def test_the_async_trl_wrapper_closes_its_normalizer_of_a_loop_still_running(
        thread_loop: asyncio.AbstractEventLoop, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_rewardnorm.aio import AsyncSharedRewardNormalizer

    closed: list[asyncio.AbstractEventLoop] = []
    original = AsyncSharedRewardNormalizer.aclose

    async def recording(self: AsyncSharedRewardNormalizer) -> None:
        closed.append(asyncio.get_running_loop())
        await original(self)

    monkeypatch.setattr(AsyncSharedRewardNormalizer, "aclose", recording)

    async def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]

    wrapped = SharedNormRewardFunc(reward, namespace=namespace, warmup=0)
    in_loop(thread_loop, wrapped(prompts=["p"] * 2, completions=["a", "bb"]))
    first = wrapped.normalizer
    asyncio.run(wrapped(prompts=["p"] * 2, completions=["a", "bbb"]))
    in_loop(thread_loop, asyncio.sleep(0))
    assert wrapped.normalizer is not first and wrapped.normalizer.count == 4 and closed == [thread_loop]
    asyncio.run(wrapped.aclose())


def test_a_store_outage_never_ends_a_training_step(namespace: str) -> None:
    """on_unavailable="local" by default: with nothing listening, the wrapper still returns
    rewards (raw during warmup, then normalized against the scores it has seen) and counts them."""
    from tests.support.redis_servers import free_port

    def accuracy(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]

    wrapped = SharedNormRewardFunc(accuracy, redis=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace,
                                   warmup=3)
    assert wrapped(completions=["a", "bbb"]) == [1.0, 3.0]  # warming up: raw
    second = wrapped(completions=["cc", "dddd"])  # against the 4 scores seen: mean 2.5, std sqrt(1.25)
    assert second == pytest.approx([-0.5 / (math.sqrt(1.25) + 1e-8), 1.5 / (math.sqrt(1.25) + 1e-8)])
    assert wrapped.normalizer is not None and wrapped.normalizer.degraded
    with pytest.raises(ValueError, match=r"on_unavailable must be one of 'raise', 'local', got 'skip'"):
        SharedNormRewardFunc(accuracy, on_unavailable="skip")
    wrapped.close()
