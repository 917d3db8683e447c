"""One rank of a multi-rank TRL ``GRPOTrainer`` run (``torchrun --nproc_per_node=N``, gloo on CPU),
for ``test_trl_ranks.py`` and for running it many times by hand::

    python -m torch.distributed.run --nproc_per_node=2 tests/integrations/trl_ranks.py \\
        --model DIR --out DIR --wrap sync|async|none [--redis-url URL --namespace NS] [--steps 2]

Each rank trains the tiny local model, scores its own completions with ``length_chars`` (wrapped
in ``SharedNormRewardFunc`` unless ``--wrap none``), and writes ``rank<R>.json``: how many
completions its reward function scored. Exit status 0 is the test's business:
nothing here catches an abort at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from trl_grpo import length_chars, train  # noqa: E402

#: The rewards the reward function computed on this rank (what the store must count).
SCORED: list[float] = []


def scored_length_chars(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    rewards = length_chars(prompts, completions)
    SCORED.extend(rewards)
    return rewards


async def async_scored_length_chars(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return scored_length_chars(prompts, completions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wrap", choices=["sync", "async", "none"], default="sync")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--namespace", default="rewardnorm")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--destroy-process-group", action="store_true",
                        help="end with torch.distributed.destroy_process_group(), as PyTorch asks of every script")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    func: Any = async_scored_length_chars if args.wrap == "async" else scored_length_chars
    if args.wrap != "none":  # imported only then: --wrap none runs without this library at all
        from shared_rewardnorm.trl import SharedNormRewardFunc

        func = SharedNormRewardFunc(func, env="length_chars", redis=args.redis_url, namespace=args.namespace,
                                    warmup=4)
    train(args.model, str(Path(args.out) / f"rank{rank}"), [func], steps=args.steps, scale_rewards="group", seed=0)
    Path(args.out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "scored": len(SCORED)}))
    if args.destroy_process_group:
        import torch.distributed

        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
