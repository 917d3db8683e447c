"""The README's Python examples run as written (on the embedded store, with a stand-in for
wandb), so the README stays true to the code."""

from __future__ import annotations

import asyncio
import re
import textwrap
from typing import Any

from tests.support import REPO

README = REPO / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


class WandbStandIn:
    """Records what the examples log."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log(self, metrics: dict[str, float]) -> None:
        self.logged.append(metrics)


def runnable(block: str) -> str:
    # The examples name a server; here they run on the embedded store instead.
    return block.replace('"redis://localhost:6379/0"', "None")


def test_readme_examples_run_in_order() -> None:
    """Like a notebook: each example may use names an earlier one defined (``norm``)."""
    from shared_rewardnorm import StatsStore

    wandb = WandbStandIn()
    namespace: dict[str, Any] = {"wandb": wandb, "scores": [0.1, 0.9, 0.5]}
    ran = 0
    try:
        for block in BLOCKS:
            if "cluster=True" in block or "redis+sentinel://" in block:
                continue  # needs a Redis Cluster or Sentinels: tests/deployment/ covers them
            code = runnable(block)
            if "await " in code:
                exec("async def example():\n" + textwrap.indent(code, "    ") + "\n    return locals()", namespace)
                namespace.update(asyncio.run(namespace["example"]()))
            else:
                exec(code, namespace)
            ran += 1
            if "normalize(" in code:
                assert len(namespace["normalized"]) > 0
        assert ran >= 3
        assert len(wandb.logged) == 2 and all(wandb.logged)
        assert "reward_norm/count" in wandb.logged[0] and "reward_norm/gsm8k/count" in wandb.logged[1]
    finally:
        store = StatsStore(None)  # the examples use the default namespace of the embedded store
        for env in store.envs():
            store.reset(env)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3
