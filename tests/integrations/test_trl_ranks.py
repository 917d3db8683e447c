"""``SharedNormRewardFunc`` in a 2-rank TRL ``GRPOTrainer`` run: ``torchrun --nproc_per_node=2``,
gloo on CPU, each rank scoring its own completions (``trl_ranks.py``) against the real Redis.
Both ranks' completions are counted exactly once, and every rank exits 0. The ranks end with
``torch.distributed.destroy_process_group()``, as PyTorch asks of every script that set up a
process group (TRL's ``Trainer`` does not)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.integrations import import_example, require_module

pytestmark = [pytest.mark.trl, pytest.mark.slow]

require_module("trl", "trl")

from shared_rewardnorm import StatsStore  # noqa: E402

RANK_SCRIPT = Path(__file__).with_name("trl_ranks.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return import_example("offline_models").save_tiny_llama(tmp_path_factory.mktemp("model"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("wrap", ["sync", "async"])
def test_two_ranks_count_each_completion_once_and_exit_zero(model_dir: str, real_redis_url: str, namespace: str,
                                                            tmp_path: Path, wrap: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(RANK_SCRIPT), "--model", model_dir, "--out", str(tmp_path), "--wrap", wrap,
         "--redis-url", real_redis_url, "--namespace", namespace, "--steps", "2",
         # TRL never destroys the process group; left to interpreter shutdown, gloo's worker
         # threads now and then abort the process ("terminate called without an active
         # exception"), with or without this library.
         "--destroy-process-group"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    scored = [r["scored"] for r in ranks]
    assert scored == [16, 16]  # 2 steps x per_device_train_batch_size 8 on each rank
    assert StatsStore(real_redis_url, namespace).get("length_chars").count == sum(scored)
