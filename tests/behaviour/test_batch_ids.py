"""How the shells resolve a batch through the ledger: the same name, the same request; an
unnamed batch, a new one (on the embedded store, with the client's sending stubbed so the
requests can be compared)."""

from __future__ import annotations

from typing import Any

from shared_rewardnorm import RunningStats, StatsStore
from tests.unit.test_merge_op import reply_for


def test_the_sync_shell_sends_the_ledgers_request_for_a_named_batch_twice() -> None:
    """The shell resolves each MergeBatch through the ledger: the same name, the same request."""
    store = StatsStore(None, "ledger-shell")
    sent: list[Any] = []
    store._issue = lambda request: sent.append(request) or reply_for(RunningStats.from_values([1.0]), 1)  # type: ignore[method-assign]
    store.update("env", [1.0], batch_id="b")
    store.update("env", [1.0], batch_id="b")
    store.update("env", [1.0])
    assert sent[0] is sent[1] and sent[2] is not sent[0]
    assert [request.args[1] for request in sent] == ["0000000000000001", "0000000000000001", "0000000000000002"]
