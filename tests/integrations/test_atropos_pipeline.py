"""Atropos end to end (``examples/atropos_pipeline.py``): Atropos's real API server
(``run-api``), two env processes running the real ``serve`` subcommand with the mixin, an
OpenAI-compatible stand-in for the inference server, and a trainer that registers and pulls
batches, against the real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.integrations import EXAMPLES, import_example, require_module

pytestmark = [pytest.mark.atropos, pytest.mark.slow]

require_module("atroposlib", "atropos")

from transformers import AutoTokenizer  # noqa: E402

from shared_rewardnorm import StatsStore  # noqa: E402
from shared_rewardnorm._core.normalization import NormalizerSettings, normalize_values  # noqa: E402
from shared_rewardnorm.stats import RunningStats  # noqa: E402

pipeline = import_example("atropos_pipeline")
RECORDING_ENV = Path(__file__).with_name("atropos_recording_env.py")
REPO = Path(__file__).resolve().parents[2]


def test_two_envs_serve_z_scores_against_one_hash_to_a_trainer(real_redis_url: str, namespace: str,
                                                               tmp_path: Path) -> None:
    record = tmp_path / "normalized.jsonl"
    env_vars = {"SRN_ATROPOS_RECORD": str(record),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    def both_envs_normalized() -> bool:  # on a busy machine one env can serve the first batches alone
        lines = record.read_text().split("\n")[:-1] if record.exists() else []  # complete lines only
        return len({json.loads(line)["pid"] for line in lines}) >= 2

    run = pipeline.run_pipeline(real_redis_url, namespace, batches=4, workdir=str(tmp_path),
                                env_script=RECORDING_ENV, env_vars=env_vars, until=both_envs_normalized)
    for log in run.env_logs:  # the envs registered (no 422 for a missing wandb_name) and sent everything
        assert "Error registering env" not in log and "Failed to send" not in log, log[-3000:]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    group_size = pipeline.GROUP_SIZE

    # What the envs normalized is every group the inference stand-in answered, no more.
    assert len(calls) == len(run.answered) and all(len(c["raw"]) == group_size for c in calls)
    assert len({c["pid"] for c in calls}) == 2  # both env processes normalized
    stats = StatsStore(real_redis_url, namespace).get("toy_arithmetic")
    assert stats.count == group_size * len(calls)
    raws = [x for c in calls for x in c["raw"]]
    assert stats.mean == pytest.approx(sum(raws) / len(raws), rel=1e-12)
    assert sorted(raws) == sorted(pipeline.score(r, dict(pipeline.QUESTIONS)[a["question"]])
                                  for a in run.answered for r in a["replies"])

    # Each z-score is the library's normalization against the shared statistics that call got
    # back, and those statistics hold both envs' scores: an env sees counts beyond its own.
    settings = NormalizerSettings.create("zscore", 5.0, 8)
    for call in calls:
        assert call["normalized"] == normalize_values(call["raw"], RunningStats.from_dict(call["stats"]), settings)
    for pid in {c["pid"] for c in calls}:
        own = [c for c in calls if c["pid"] == pid]
        assert any(c["stats"]["count"] > group_size * (index + 1) for index, c in enumerate(own))
    assert max(c["stats"]["count"] for c in calls) == stats.count
    assert len({c["batch_id"] for c in calls}) == len(calls)  # one batch id per group

    # The trainer got every group BaseEnv kept (normalized scores not all equal), less the few
    # left in the API server's queue, with the scores the envs computed, from both envs.
    kept = [c for c in calls if len(set(c["normalized"])) > 1]
    received = [group for batch in run.batches for group in batch]
    assert len(received) + run.queued == len(kept)
    assert len(received) >= 4 * pipeline.BATCH_SIZE // group_size
    assert {g["env_id"] for g in received} == {0, 1}
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    by_scores = Counter((tuple(c["raw"]), tuple(c["normalized"])) for c in kept)
    for group in received:
        key = (tuple(pipeline.raw_scores(group, tokenizer)), tuple(group["scores"]))
        assert by_scores[key] > 0, key
        by_scores[key] -= 1
    assert len(calls) > len(kept)  # some groups had equal raw scores: counted, then dropped by BaseEnv


def test_the_pipeline_example_runs_as_documented(real_redis_url: str, namespace: str) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "atropos_pipeline.py"), "--redis-url", real_redis_url,
                             "--batches", "3", "--namespace", namespace], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert re.search(r"^batch 0  env [01]  raw .* ->  z ", result.stdout, re.M), result.stdout
    count, normalized = re.search(r"shared count (\d+) \(scores the envs normalized: (\d+)\)", result.stdout).groups()
    assert count == normalized and int(count) > 0
