"""The prompt commands of the CLI against a real Redis: configure, the summary with the hardest
and easiest prompts (text and JSON), export, import into another namespace, forget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_rewardnorm import PromptStats
from shared_rewardnorm.cli.commands import main

pytestmark = pytest.mark.real_redis


def test_the_prompt_commands(real_redis_url: str, namespace: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--url", real_redis_url, "--namespace", namespace]
    assert main(["configure-prompts", "math", "--decay", "0.5", *where]) == 0
    assert "math: prompt decay 0.5, 16384 buckets" in capsys.readouterr().out
    prompts = PromptStats("math", real_redis_url, namespace=namespace)
    prompts.update(["easy", "easy", "hard", "mid", "mid"], [1.0, 1.0, 0.0, 1.0, 0.0])
    assert main(["prompts", "math", "--hardest", "1", "--easiest", "1", *where]) == 0
    out = capsys.readouterr().out
    assert "math: 3 prompts, 3 visits, 5 rewards (decay 0.5, 16384 buckets)" in out
    assert f"identity  epoch {prompts.identity[0]} (origin configure: created by configure-prompts)" in out
    assert "hardest:\n    'hard': mean 0" in out and "easiest:\n    'easy': mean 1" in out
    assert main(["prompts", "math", "--json", "--hardest", "2", *where]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prompts"] == 3 and summary["mean_quantiles"]["0.5"] == 0.5
    assert (summary["epoch"], summary["origin"]) == (prompts.identity[0], "configure")
    assert [prompt_id for prompt_id, _ in summary["hardest"]] == ["hard", "mid"]
    assert main(["configure-prompts", "math", "--decay", "1.5", *where]) == 1
    assert "decay must be a number in (0, 1]" in capsys.readouterr().err
    target = tmp_path / "prompts.json"
    assert main(["export-prompts", "math", str(target), *where]) == 0
    copy = ["--url", real_redis_url, "--namespace", namespace + "-copy"]
    assert main(["import-prompts", str(target), *copy]) == 0
    assert "restored 3 prompts into 'math'" in capsys.readouterr().out
    assert PromptStats("math", real_redis_url, namespace=namespace + "-copy").get(["mid"]) == prompts.get(["mid"])
    assert main(["forget-prompts", "math", *where]) == 2
    assert main(["forget-prompts", "math", "--yes", *where]) == 0
    assert prompts.get(["easy"]) == [None]
    prompts.close()
