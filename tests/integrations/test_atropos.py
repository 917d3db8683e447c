"""The Atropos integration against the real installed ``atroposlib``, offline: groups go through
``BaseEnv.handle_env`` (or ``process_manager``), and what reaches the rollout API, the JSONL
file and ``wandb.log`` is checked against the reference's behaviour (``OracleNormalizer``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.integrations import import_example, require_module
from tests.support.reference_oracle import OracleNormalizer

pytestmark = pytest.mark.atropos

require_module("atroposlib", "atropos")

from atroposlib.envs import base as atropos_base  # noqa: E402
from atroposlib.envs.base import APIServerConfig, BaseEnv, ScoredDataGroup  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from shared_rewardnorm import StatsStore  # noqa: E402
from shared_rewardnorm.atropos import SharedRewardNormConfig, SharedRewardNormMixin  # noqa: E402

offline_models = import_example("offline_models")
GROUP = 4


class GroupsEnv(SharedRewardNormMixin, BaseEnv):
    """Its items are scored groups: ``{"scores": [...], "size": n, "length": tokens}``."""

    name = "groups_env"
    env_config_cls = SharedRewardNormConfig

    async def setup(self) -> None:
        return None

    async def get_next_item(self) -> Any:
        return None

    async def evaluate(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def collect_trajectories(self, item: dict[str, Any]) -> tuple[ScoredDataGroup, list[Any]]:
        n, length = item.get("size", len(item["scores"])), item.get("length", 3)
        group = ScoredDataGroup(tokens=[[5] * length for _ in range(n)], masks=[[5] * length for _ in range(n)],
                                scores=list(item["scores"]), group_overrides=item.get("overrides", {}))
        return group, []


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_models.save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))




def make_env(tokenizer_dir: str, namespace: str, url: str | None = None, cls: type = GroupsEnv,
             **settings: Any) -> Any:
    config = SharedRewardNormConfig(tokenizer_name=tokenizer_dir, group_size=GROUP, use_wandb=False,
                                    reward_norm_namespace=namespace, reward_norm_redis_url=url, **settings)
    env = cls(config, [APIServerConfig(model_name="m", base_url="http://127.0.0.1:9/v1", api_key="x")],
              testing=True)
    env.max_token_len = 64  # what the trainer sets when the env registers
    env.sent = []

    async def capture(scored_data: Any) -> None:  # the rollout API's place: record what was posted
        env.sent.append(json.loads(json.dumps(scored_data)))

    env._send_scored_data_to_api = capture
    return env


async def run_items(env: Any, items: list[dict[str, Any]]) -> None:
    """Each item through ``BaseEnv.handle_env``, as ``serve`` runs it."""
    for item in items:
        key = str(uuid.uuid4())
        env.running_items[key] = {"item": item}
        await env.handle_env(key)


def drive(envs: list[Any], work: Any) -> None:
    """Run ``work`` in a new event loop, then close the envs' connections before it ends."""
    async def main() -> None:
        try:
            await work
        finally:
            for env in envs:
                await env.close_reward_normalizer()

    asyncio.run(main())


# Groups that exercise each rule: warmup (raw, clipped), an outlier clipped, raw scores all equal
# (counted, then skipped), wrong-sized and too-long groups (dropped by BaseEnv: not counted).
ITEMS = [
    {"scores": [0.0, 1.0, 0.0, 1.0]},
    {"scores": [7.0, -9.0, 0.5, 0.25]},
    {"scores": [1.0, 1.0, 1.0, 1.0]},
    {"scores": [0.0, 1.0, 0.0], "size": 3},
    {"scores": [0.5, 0.25, 0.0, 1.0], "length": 80},
    {"scores": [0.2, 0.9, 0.4, 0.3]},
    {"scores": [40.0, 0.0, 1.0, 0.5]},
    {"scores": [0.6, 0.1, 0.8, 0.3]},
]
COUNTED = [item for item in ITEMS if item.get("size", GROUP) == GROUP and item.get("length", 3) < 64]


def expected_sent(oracle: OracleNormalizer, items: list[dict[str, Any]]) -> list[list[float]]:
    sent = []
    for item in items:
        normalized = oracle.normalize(list(item["scores"]))
        if len(set(normalized)) > 1:  # BaseEnv's ensure_scores_are_not_same, on normalized scores
            sent.append(normalized)
    return sent


def assert_groups_close(got: list[list[float]], expected: list[list[float]]) -> None:
    """Equal up to rounding: the store merges a group's summary (Chan) where the reference adds
    its scores one by one (Welford), so the last bits may differ (as in test_normalizer)."""
    assert len(got) == len(expected), (got, expected)
    for ours, reference in zip(got, expected):
        assert ours == pytest.approx(reference, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
@pytest.mark.parametrize("clip", [5.0, 1.0, 0.0])
def test_parity_with_the_reference(tokenizer_dir: str, namespace: str, url: str | None, mode: str,
                                   clip: float) -> None:
    env = make_env(tokenizer_dir, namespace, url, reward_normalization=mode, reward_clip=clip,
                   reward_normalization_warmup=6)
    drive([env], run_items(env, ITEMS))
    oracle = OracleNormalizer(mode=mode, clip=clip, warmup=6)
    assert_groups_close([group["scores"] for group in env.sent], expected_sent(oracle, COUNTED))
    with StatsStore(url, namespace) as store:
        assert store.get("groups_env").count == sum(len(item["scores"]) for item in COUNTED)


def test_a_group_that_collapses_after_clipping_is_skipped(tokenizer_dir: str, namespace: str) -> None:
    """Raw scores differ, but warmup passes them through clipped to +/-1: all equal, skipped."""
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_clip=1.0,
                   reward_normalization_warmup=100)
    drive([env], run_items(env, [{"scores": [3.0, 4.0, 5.0, 6.0]}, {"scores": [0.5, 0.0, 1.0, 0.5]}]))
    assert [group["scores"] for group in env.sent] == [[0.5, 0.0, 1.0, 0.5]]
    assert StatsStore(None, namespace).get("groups_env").count == 8


def test_none_leaves_scores_untouched_and_records_nothing(tokenizer_dir: str, namespace: str,
                                                          url: str | None) -> None:
    env = make_env(tokenizer_dir, namespace, url)
    assert env.config.reward_normalization == "none" and env.reward_normalizer is None
    drive([env], run_items(env, ITEMS))
    assert [group["scores"] for group in env.sent] == [item["scores"] for item in COUNTED
                                                      if len(set(item["scores"])) > 1]
    with StatsStore(url, namespace) as store:
        assert store.envs() == []


def test_two_replicas_share_one_set_of_statistics(tokenizer_dir: str, namespace: str,
                                                  url: str | None) -> None:
    """Replicas take turns; each normalizes against what both have recorded, exactly as one
    reference normalizer fed every group in that order would."""
    replicas = [make_env(tokenizer_dir, namespace, url, reward_normalization="zscore",
                         reward_normalization_warmup=4) for _ in range(2)]
    replicas[1].sent = replicas[0].sent  # one list, in the order the groups were posted

    async def main() -> None:
        for index, item in enumerate(COUNTED):
            await run_items(replicas[index % 2], [item])

    last = replicas[(len(COUNTED) - 1) % 2]
    seen: list[int] = []

    async def then_count() -> None:
        await main()
        seen.append(last.reward_normalizer.count)

    drive(replicas, then_count())
    assert_groups_close([group["scores"] for group in replicas[0].sent],
                        expected_sent(OracleNormalizer(warmup=4), COUNTED))
    assert seen == [sum(len(item["scores"]) for item in COUNTED)]


#: Run with the repository root as the working directory, so ``python -c`` finds ``tests.support``.
TWO_PROCESSES = textwrap.dedent("""
    import asyncio
    from tests.support.integrations import import_example
    example = import_example("atropos_env")
    config, servers = example.ToyArithmeticEnv.config_init()
    config = config.model_copy(update={{"reward_norm_redis_url": {url!r}, "reward_norm_namespace": {namespace!r}}})
    env = example.OfflineToyArithmeticEnv(config, servers, testing=True, seed={seed})
    env.max_token_len = 64

    async def main():
        await env.setup()
        for _ in range({steps}):
            group, _ = await env.collect_trajectories(await env.get_next_item())
            await env.handle_send_to_api(group, do_send_to_api=False)
        await env.close_reward_normalizer()

    asyncio.run(main())
""")


@pytest.mark.real_redis
def test_two_processes_share_one_set_of_statistics(real_redis_url: str, namespace: str) -> None:
    steps = 5
    scripts = [TWO_PROCESSES.format(url=real_redis_url, namespace=namespace, seed=seed, steps=steps)
               for seed in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
               for script in scripts]
    try:
        for worker in workers:
            _, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err
        with StatsStore(real_redis_url, namespace) as store:
            assert store.get("toy_arithmetic").count == 2 * steps * 4  # group_size 4 in the example
    finally:
        with StatsStore(real_redis_url, namespace) as store:
            store.reset("toy_arithmetic")


def test_metrics_reach_wandb_log(tokenizer_dir: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0)
    env.config.use_wandb = True
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(atropos_base.wandb, "log", lambda metrics, step=None: logged.append(dict(metrics)))

    async def no_server_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
        return metrics  # Atropos 0.4.0's fake server has no wandb_metrics

    env.server.servers[0].wandb_metrics = no_server_metrics

    async def main() -> None:
        await run_items(env, [{"scores": [1.0, 2.0, 3.0, 6.0]}])
        await env.wandb_log({"mine": 1.0})

    drive([env], main())
    [metrics] = logged
    assert metrics["mine"] == 1.0
    assert metrics["reward_norm/count"] == 4.0
    assert metrics["reward_norm/mean"] == 3.0
    assert metrics["reward_norm/std"] == pytest.approx((14 / 4) ** 0.5, rel=1e-15)
    assert (metrics["reward_norm/min"], metrics["reward_norm/max"]) == (1.0, 6.0)


def test_process_mode_writes_normalized_scores(tokenizer_dir: str, namespace: str, tmp_path: Path) -> None:
    """``process`` (``BaseEnv.process_manager``) writes the groups to JSONL: normalized."""
    example = import_example("atropos_env")
    out = tmp_path / "groups.jsonl"
    env = make_env(tokenizer_dir, namespace, cls=example.OfflineToyArithmeticEnv, reward_normalization="minmax",
                   reward_normalization_warmup=0, data_path_to_save_groups=str(out), total_steps=3)
    env.process_mode, env.n_groups_to_process, env.group_size_to_process = True, 3, GROUP

    async def no_server_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
        return metrics

    env.server.servers[0].wandb_metrics = no_server_metrics
    raw: list[list[float]] = []
    collect = env.collect_trajectories

    async def recording(item: Any) -> Any:
        group, backlog = await collect(item)
        raw.append(list(group["scores"]))
        return group, backlog

    env.collect_trajectories = recording
    drive([env], env.process_manager())
    written = [json.loads(line)["scores"] for line in out.read_text().splitlines()]
    oracle = OracleNormalizer(mode="minmax", warmup=0)
    assert_groups_close(written, [oracle.normalize(scores) for scores in raw])  # process mode keeps equal groups
    assert len(written) == 3
    assert StatsStore(None, namespace).get(env.reward_norm_env).count == sum(map(len, raw)) == 3 * GROUP


def test_the_fields_are_options_of_the_env_cli(tokenizer_dir: str) -> None:
    example = import_example("atropos_env")
    fields = example.ToyArithmeticEnv.get_cli_serve_config_cls().model_fields
    assert fields["env.reward_normalization"].default == "none"  # serve's defaults: the config class's
    assert fields["env.reward_clip"].default == 5.0
    assert fields["env.reward_norm_env"].default is None
    result = subprocess.run([sys.executable, str(import_example("atropos_env").__file__), "process", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--env.reward_normalization", "--env.reward_clip", "--env.reward_normalization_warmup",
                   "--env.reward_norm_redis_url", "--env.reward_norm_namespace", "--env.reward_norm_env"):
        assert option in result.stdout


def test_reference_defaults() -> None:
    config = SharedRewardNormConfig()
    assert (config.reward_normalization, config.reward_clip, config.reward_normalization_warmup) == ("none", 5.0, 10)
    assert (config.reward_norm_redis_url, config.reward_norm_namespace, config.reward_norm_env) == (
        None, "rewardnorm", None)


@pytest.mark.parametrize(("settings", "message"), [
    ({"reward_normalization": "l2"}, r"(?s)reward_normalization.*'none', 'zscore' or 'minmax'"),
    ({"reward_clip": -1.0}, r"(?s)reward_clip.*greater than or equal to 0"),
    ({"reward_normalization_warmup": -3}, r"(?s)reward_normalization_warmup.*greater than or equal to 0"),
    ({"reward_norm_redis_url": "localhost:6379"}, r"reward_norm_redis_url must start with redis://"),
    ({"reward_norm_env": "a{b}"}, r"env name 'a\{b\}' contains '\{'"),
    ({"reward_norm_namespace": ""}, r"namespace must not be empty"),
])
def test_bad_settings_fail_when_the_config_is_built(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SharedRewardNormConfig(**settings)


@pytest.mark.real_redis
def test_no_url_means_the_url_variable(tokenizer_dir: str, namespace: str, real_redis_url: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``reward_norm_redis_url=None`` follows the library's rule: ``$SHARED_REWARDNORM_URL``."""
    monkeypatch.setenv("SHARED_REWARDNORM_URL", real_redis_url)
    env = make_env(tokenizer_dir, namespace, None, reward_normalization="zscore")
    try:
        drive([env], run_items(env, [{"scores": [0.0, 1.0, 2.0, 3.0]}]))
        with StatsStore(real_redis_url, namespace) as store:
            assert store.get("groups_env").count == 4
    finally:
        with StatsStore(real_redis_url, namespace) as store:
            store.reset("groups_env")


def test_the_env_name_is_the_class_name_not_wandb_name(tokenizer_dir: str, namespace: str) -> None:
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", wandb_name="groups_env_replica_3")
    assert env.reward_norm_env == "groups_env" and env.reward_normalizer.env == "groups_env"
    named = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_norm_env="shared")
    assert named.reward_normalizer.env == "shared"


def test_the_mixin_must_come_first() -> None:
    with pytest.raises(TypeError, match="list SharedRewardNormMixin before BaseEnv"):
        type("Wrong", (BaseEnv, SharedRewardNormMixin), {})


def test_a_plain_config_is_refused(tokenizer_dir: str) -> None:
    with pytest.raises(TypeError, match=r"needs a SharedRewardNormConfig.*got BaseEnvConfig"):
        GroupsEnv(atropos_base.BaseEnvConfig(tokenizer_name=tokenizer_dir), [], testing=True)


def test_the_example_demo_runs_as_documented() -> None:
    """``python examples/atropos_env.py demo``: two replicas, one set of statistics."""
    example = import_example("atropos_env")
    without_url = {name: value for name, value in os.environ.items() if name != "SHARED_REWARDNORM_URL"}
    result = subprocess.run([sys.executable, str(example.__file__), "demo", "--steps", "4"], capture_output=True,
                            text=True, timeout=120, env=without_url)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("replica")]
    assert [line.split()[1] for line in lines] == ["0", "1", "0", "1"]
    assert [int(line.split("shared count ")[1].split(",")[0]) for line in lines] == [4, 8, 12, 16]


def test_a_group_sized_by_its_overrides_is_counted(tokenizer_dir: str, namespace: str) -> None:
    """BaseEnv takes a group's size from ``group_overrides["group_size"]`` when it is set: such
    a group is sent, so it is normalized and counted; one of the config's size that says
    otherwise is dropped, and not counted."""
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0,
                   reward_clip=0.0)
    items = [{"scores": [1.0, 2.0, 6.0], "size": 3, "overrides": {"group_size": 3}},
             {"scores": [0.0, 1.0, 2.0, 3.0], "overrides": {"group_size": 3}}]
    drive([env], run_items(env, items))
    assert_groups_close([group["scores"] for group in env.sent], [OracleNormalizer(warmup=0, clip=0.0).normalize(
        [1.0, 2.0, 6.0])])
    assert StatsStore(None, namespace).get("groups_env").count == 3


def test_group_overrides_none_counts_nothing_as_base_env_sends_nothing(tokenizer_dir: str, namespace: str) -> None:
    """BaseEnv (atroposlib 0.4.0) calls ``group.get("group_overrides", {}).get(...)``, so an
    explicit ``None`` makes it raise before sending anything: the mixin raises the same error
    before counting anything, the valid group before it included."""
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0)
    good = ScoredDataGroup(tokens=[[5] * 3] * GROUP, masks=[[5] * 3] * GROUP, scores=[0.0, 1.0, 2.0, 3.0],
                           group_overrides={})
    bad = ScoredDataGroup(tokens=[[5] * 3] * GROUP, masks=[[5] * 3] * GROUP, scores=[0.0, 1.0, 2.0, 4.0],
                          group_overrides=None)
    plain = make_env(tokenizer_dir, namespace)  # reward_normalization="none": BaseEnv's own behaviour
    for subject in (plain, env):
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
            drive([subject], subject.handle_send_to_api([dict(good), dict(bad)]))
        assert subject.sent == []
    assert StatsStore(None, namespace).envs() == []


def test_wandb_log_survives_a_corrupt_hash(tokenizer_dir: str, namespace: str, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A ``CorruptStatsError`` (a library error, not a ``redis.RedisError``) must not stop the
    step's logging either: the metrics are logged without ours, with a warning naming why."""
    import fakeredis

    from shared_rewardnorm._redis.connection import embedded_server

    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0)
    env.config.use_wandb = True
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(atropos_base.wandb, "log", lambda metrics, step=None: logged.append(dict(metrics)))

    async def no_server_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
        return metrics

    env.server.servers[0].wandb_metrics = no_server_metrics
    fakeredis.FakeRedis(server=embedded_server()).hset(f"{namespace}:{{groups_env}}", "mean", "nan")

    async def main() -> None:
        await env.wandb_log({"mine": 1.0})

    with caplog.at_level("WARNING", logger="shared_rewardnorm.atropos"):
        drive([env], main())
    [metrics] = logged
    assert metrics["mine"] == 1.0 and not any(key.startswith("reward_norm/") for key in metrics)
    assert "reward_norm metrics for 'groups_env' not logged this step: corrupt stats hash" in caplog.text


def test_a_new_event_loop_gets_a_new_normalizer(tokenizer_dir: str, namespace: str) -> None:
    """Driven by a second loop, the env makes a new normalizer; the first, whose loop is gone,
    is dropped (not used from the wrong loop), and counting goes on in the same statistics."""
    env = make_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0)
    seen = []

    async def one(item: dict[str, Any]) -> None:
        await run_items(env, [item])
        seen.append(env.reward_normalizer)

    asyncio.run(one({"scores": [0.0, 1.0, 2.0, 3.0]}))
    drive([env], one({"scores": [1.0, 2.0, 3.0, 4.0]}))
    assert seen[0] is not seen[1] and seen[1].count == 8
