"""examples/prompt_sharing.py, small, on the embedded store (worker threads): one shared tracker
wastes fewer rollouts on zero-variance groups and estimates pass rates better than none or
per-worker trackers, and the plot is drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.integrations import import_example


def test_sharing_the_tracker_wastes_fewer_rollouts_and_estimates_better(tmp_path: Path) -> None:
    example = import_example("prompt_sharing")
    curves = example.measure(example.Setup(prompts=90, workers=3, rounds=20, checkpoints=4))
    final = {strategy: points[-1] for strategy, points in curves.items()}
    assert {points[-1][0] for points in curves.values()} == {3 * 20 * 8 * 8}  # the same rollouts each
    assert final["shared"][1] < final["local"][1] < final["none"][1]  # zero-variance fraction
    assert final["shared"][2] < final["local"][2] < final["none"][2]  # pass-rate error
    pytest.importorskip("matplotlib")  # the [plot] extra
    example.plot(curves, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 10_000
