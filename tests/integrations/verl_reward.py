"""The custom reward function the verl tests configure (``reward.custom_reward_function``):
verl loads it by file path in every reward worker. Scores are not just 0/1 (a right answer
scores 1, minus 0.1 per word), and each result says which process scored it."""

from __future__ import annotations

import os
from typing import Any


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None,
                  **kwargs: Any) -> dict[str, Any]:
    return {"score": expected_score(solution_str, ground_truth), "pid": os.getpid()}


def expected_score(solution_str: str, ground_truth: str) -> float:
    words = solution_str.split()
    return (1.0 if ground_truth in words else 0.0) - 0.1 * len(words)
