"""The demo without running it: the histograms drawn from a made-up result, a missing matplotlib
reported in one line before anything runs, and misuse refused (the runs: tests/behaviour/test_demo.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm import RunningStats
from shared_rewardnorm.cli import main
from shared_rewardnorm.cli.demo import (
    DEMO_ENVS,
    Check,
    DemoConfig,
    DemoError,
    DemoResult,
    EnvOutcome,
    histogram_figure,
    plot_histograms,
    require_matplotlib,
)
from tests.support.cli import assert_one_error_line


def fake_result() -> DemoResult:
    outcomes = tuple(EnvOutcome(env, raw=(0.0, 1.0), normalized=(-1.0, 1.0),
                                stored=RunningStats.from_values([0.0, 1.0]), replica_views=())
                     for env in DEMO_ENVS)
    return DemoResult(url="redis://x", embedded=True, namespace="n", workers=3, calls=3, elapsed=1.0,
                      envs=outcomes, checks=(Check("counts", True, ""),), kept=False)


def test_plot_histograms_has_a_row_per_env(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_histograms(fake_result(), tmp_path / "plot.png")
    assert path.stat().st_size > 10_000


def test_every_histogram_has_axis_labels() -> None:
    pytest.importorskip("matplotlib")
    axes = histogram_figure(fake_result()).get_axes()
    assert len(axes) == 2 * len(DEMO_ENVS)
    assert {ax.get_xlabel() for ax in axes} == {"raw reward", "normalized reward (z-score)"}
    assert {ax.get_ylabel() for ax in axes} == {"rewards in the bin"}


def test_missing_matplotlib_is_one_line_before_running(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(DemoError, match=r"pip install 'shared-rewardnorm\[plot\]'"):
        require_matplotlib()
    assert main(["demo", "--plot", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, "shared-rewardnorm[plot]")
    assert captured.out == ""  # refused before the demo started
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--keep"], "need a url"),
    (["--cluster", "demo"], "need a url"),
    (["demo", "--workers", "2"], "must be >= 3"),
    (["demo", "--batches", "0"], "must be >= 1"),
])
def test_demo_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"workers": 2}, {"batches": 0}, {"batch_size": 0}, {"warmup": -1},
                                     {"keep": True}, {"cluster": True}])
def test_demo_config_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**options)
