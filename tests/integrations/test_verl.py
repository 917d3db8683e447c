"""``SharedNormRewardManager`` inside the real verl (0.9) on CPU: loaded by verl's own
``load_reward_manager`` from verl's real ``ppo_trainer`` config, fed trajectories by verl's own
``AgentLoopWorker._compute_score`` (the agent loop's streaming reward: one trajectory per call,
to a worker picked at random), first in-process through ``RewardLoopWorker``, then through
``RewardLoopManager``'s two Ray workers against the real Redis."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.integrations import import_example, require_module

pytestmark = [pytest.mark.verl, pytest.mark.slow]

require_module("verl", "verl")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

with warnings.catch_warnings():
    # verl 0.9.1 imports Ray's state API by its old path (a DeprecationWarning of Ray's, at import)
    warnings.filterwarnings("ignore", "Ray state API is no longer experimental", DeprecationWarning)
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
from verl.experimental.reward_loop import RewardLoopManager, RewardLoopWorker  # noqa: E402
from verl.experimental.reward_loop.reward_manager import NaiveRewardManager, get_reward_manager_cls  # noqa: E402
from verl.utils.import_utils import load_module  # noqa: E402

from shared_rewardnorm import SharedRewardNormalizer, StatsStore  # noqa: E402
from shared_rewardnorm.verl import REGISTERED_NAME, SharedNormRewardManager  # noqa: E402
from tests.integrations.verl_reward import expected_score  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REWARD_FN = Path(__file__).with_name("verl_reward.py")
offline_models = import_example("offline_models")
ENVS = ("arith", "count")  # two data sources: two statistics hashes


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_models.save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def verl_config(tokenizer_dir: str, namespace: str, url: str | None, *overrides: str) -> Any:
    """verl's real ``ppo_trainer`` config with the lines docs/user/frameworks/verl.md gives."""
    lines = [
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        "reward.reward_manager.source=importlib",
        "reward.reward_manager.module.path=pkg://shared_rewardnorm.verl",
        "reward.reward_manager.name=SharedNormRewardManager",
        f"reward.custom_reward_function.path={REWARD_FN}",
        "reward.custom_reward_function.name=compute_score",
        f"+reward.shared_rewardnorm.namespace={namespace}",
        "+reward.shared_rewardnorm.warmup=4",
        *([f"+reward.shared_rewardnorm.url={url}"] if url is not None else []),
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=lines)


def start_worker(config: Any) -> RewardLoopWorker:
    """``RewardLoopWorker(config)`` inside an event loop, as in its Ray actor (verl's
    ``get_event_loop()`` would otherwise make a loop that nobody closes)."""
    async def make() -> RewardLoopWorker:
        return RewardLoopWorker(config)

    return asyncio.run(make())


class InProcess:
    """A ``RewardLoopWorker`` in this process behind the call verl makes on a Ray handle
    (``handle.compute_score.remote(data)``, awaited)."""

    def __init__(self, worker: RewardLoopWorker) -> None:
        self.compute_score = SimpleNamespace(remote=worker.compute_score)


def agent_loop(handles: list[Any]) -> AgentLoopWorker:
    """verl's ``AgentLoopWorker`` reduced to what ``_compute_score`` reads (no LLM server: the
    trajectories are made here), so the data the reward workers get is built by verl's code."""
    worker = object.__new__(AgentLoopWorker)
    worker.reward_loop_worker_handles = handles
    worker.processor = None
    worker.mm_processor_kwargs = None
    return worker


def trajectories(tokenizer: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """Prompts of two data sources, ``n=4`` rollouts each (one ``uid`` per prompt, as verl's
    trainer assigns them), random replies; some rollouts of a prompt are identical."""
    rng = random.Random(seed)
    words = offline_models.WORDS
    out = []
    for prompt_index in range(count // 4):
        env = ENVS[prompt_index % 2]
        answer = rng.choice(words[11:21])
        uid = str(uuid.uuid4())
        replies = [rng.choices(words, k=rng.randrange(1, 6)) for _ in range(3)]
        replies.append(list(replies[0]))  # two rollouts of this prompt say the same thing
        for reply in replies:
            out.append({"env": env, "answer": answer, "reply": " ".join(reply), "uid": uid, "index": prompt_index,
                        "prompt_ids": tokenizer.encode(f"what is {answer}", add_special_tokens=False),
                        "response_ids": tokenizer.encode(" ".join(reply), add_special_tokens=False)})
    return out


async def score(agent: AgentLoopWorker, trajectory: dict[str, Any]) -> AgentLoopOutput:
    """One trajectory through verl's ``_compute_score``, with the sample fields the agent loop
    passes on (the dataset row's non-tensor fields)."""
    output = AgentLoopOutput(prompt_ids=trajectory["prompt_ids"], response_ids=trajectory["response_ids"],
                             response_mask=[1] * len(trajectory["response_ids"]), metrics=AgentLoopMetrics())
    kwargs = {"data_source": trajectory["env"], "reward_model": {"ground_truth": trajectory["answer"], "style": "rule"},
              "extra_info": {"index": trajectory["index"]}, "uid": trajectory["uid"], "index": trajectory["index"],
              "raw_prompt": [{"role": "user", "content": f"what is {trajectory['answer']}"}]}
    await agent._compute_score([output], kwargs=kwargs)
    return output


def test_reward_loop_worker_normalizes_each_trajectory_against_the_shared_statistics(
        tokenizer_dir: str, url: str | None, namespace: str) -> None:
    config = verl_config(tokenizer_dir, namespace, url)
    reference = {env: SharedRewardNormalizer(env, url, namespace=f"{namespace}-ref", warmup=4) for env in ENVS}

    async def main() -> None:
        worker = RewardLoopWorker(config)
        manager = worker.reward_manager
        assert type(manager) is SharedNormRewardManager
        assert isinstance(manager.inner, NaiveRewardManager)
        assert manager.inner.compute_score is manager.compute_score  # verl's custom function, passed on
        agent = agent_loop([InProcess(worker)])
        batch = trajectories(worker.input_tokenizer, 48, seed=1)
        try:
            # One at a time: each score must be exactly the library's normalization of it.
            for trajectory in batch[:16]:
                output = await score(agent, trajectory)
                info = output.extra_fields["reward_extra_info"]
                raw = expected_score(trajectory["reply"], trajectory["answer"])
                assert info["raw_score"] == raw and info["score"] == raw
                assert output.reward_score == reference[trajectory["env"]].normalize([raw])[0]
            # Concurrently, as a worker gets them from many agent loops: merges coalesce.
            outputs = await asyncio.gather(*(score(agent, trajectory) for trajectory in batch[16:]))
            for trajectory, output in zip(batch[16:], outputs):
                assert output.extra_fields["reward_extra_info"]["raw_score"] == expected_score(
                    trajectory["reply"], trajectory["answer"])
                assert output.reward_score != output.extra_fields["reward_extra_info"]["raw_score"]
            # verl stacks reward_extra_info under the first sample's keys: every sample has them all.
            keys = [list(output.extra_fields["reward_extra_info"]) for output in outputs]
            assert all(k == keys[0] for k in keys) and "raw_score" in keys[0]
        finally:
            await manager.aclose()
        store = StatsStore(url, namespace)
        for env in ENVS:
            raws = [expected_score(t["reply"], t["answer"]) for t in batch if t["env"] == env]
            stored = store.get(env)
            assert stored.count == len(raws) == 24  # identical rollouts counted twice, nothing else
            assert stored.mean == pytest.approx(sum(raws) / len(raws), rel=1e-12)

    try:
        asyncio.run(main())
    finally:
        for norm in reference.values():
            norm.close()


def test_the_manager_is_refused_where_verl_pads_batches_or_never_calls_it(tokenizer_dir: str, namespace: str) -> None:
    colocated = verl_config(tokenizer_dir, namespace, None, "reward.reward_model.enable=True",
                            f"reward.reward_model.model_path={tokenizer_dir}")
    with pytest.raises(ValueError, match=r"colocated reward model .* pads it to a multiple of reward.num_workers"):
        start_worker(colocated)
    bypassed = verl_config(tokenizer_dir, namespace, None, "reward.reward_model.enable=True",
                           "reward.reward_model.enable_resource_pool=True",
                           f"reward.reward_model.model_path={tokenizer_dir}", "reward.custom_reward_function.path=null")
    with pytest.raises(ValueError, match=r"never called .*\(compute_score_disrm\)"):
        start_worker(bypassed)


def test_bad_options_fail_when_the_worker_starts(tokenizer_dir: str, namespace: str) -> None:
    with pytest.raises(ValueError, match=r"reward.shared_rewardnorm has unknown options \['warmpu'\]"):
        start_worker(verl_config(tokenizer_dir, namespace, None, "+reward.shared_rewardnorm.warmpu=3"))
    with pytest.raises(ValueError, match=r"mode"):
        start_worker(verl_config(tokenizer_dir, namespace, None, "+reward.shared_rewardnorm.mode=zscroe"))
    with pytest.raises(ValueError, match=r"inner='SharedNormRewardManager'|is SharedNormRewardManager itself"):
        start_worker(verl_config(tokenizer_dir, namespace, None,
                                     f"+reward.shared_rewardnorm.inner={REGISTERED_NAME}"))
    with pytest.raises(ValueError, match=r"reward.shared_rewardnorm.url must start with redis://"):
        start_worker(verl_config(tokenizer_dir, namespace, None, "+reward.shared_rewardnorm.url=localhost:6379"))


def test_registered_by_name_and_importable_twice(tokenizer_dir: str, namespace: str) -> None:
    assert get_reward_manager_cls(REGISTERED_NAME) is SharedNormRewardManager
    # verl loads a module given by file path as a new module: a second class, same name.
    again = load_module(str(REPO / "shared_rewardnorm" / "integrations" / "verl.py"))
    assert again.SharedNormRewardManager is not SharedNormRewardManager
    assert get_reward_manager_cls(REGISTERED_NAME) is SharedNormRewardManager
    config = verl_config(tokenizer_dir, namespace, None, "reward.reward_manager.source=register",
                         f"reward.reward_manager.name={REGISTERED_NAME}")
    worker = start_worker(config)
    assert type(worker.reward_manager) is SharedNormRewardManager


@pytest.fixture
def ray_cluster() -> Any:
    import ray

    # The workers import this checkout's shared_rewardnorm, as the tests here do.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()


def test_two_ray_reward_workers_count_every_trajectory_once_in_one_hash(
        tokenizer_dir: str, real_redis_url: str, namespace: str, ray_cluster: Any) -> None:
    config = verl_config(tokenizer_dir, namespace, real_redis_url, "reward.num_workers=2")
    manager = RewardLoopManager(config)
    assert len(manager.reward_loop_workers) == 2
    tokenizer = offline_models_tokenizer(tokenizer_dir)
    batch = trajectories(tokenizer, 64, seed=2)
    agent = agent_loop(manager.reward_loop_workers)

    async def main() -> list[AgentLoopOutput]:
        return await asyncio.gather(*(score(agent, trajectory) for trajectory in batch))

    outputs = asyncio.run(main())
    pids = [output.extra_fields["reward_extra_info"]["pid"] for output in outputs]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # both Ray workers scored, not this process
    store = StatsStore(real_redis_url, namespace)
    assert sorted(store.envs()) == sorted(ENVS)
    for env in ENVS:
        raws = [expected_score(t["reply"], t["answer"]) for t in batch if t["env"] == env]
        stored = store.get(env)
        assert stored.count == len(raws) == 32
        assert stored.mean == pytest.approx(sum(raws) / len(raws), rel=1e-12)
    for trajectory, output in zip(batch, outputs):
        assert output.extra_fields["reward_extra_info"]["raw_score"] == expected_score(
            trajectory["reply"], trajectory["answer"])


def offline_models_tokenizer(directory: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)
