"""A TCP proxy that adds latency: every chunk of bytes is held for ``delay`` seconds in each
direction before it is passed on, in order, so a round trip through it takes at least
``2 * delay`` more than on loopback (pipelining still works: chunks overlap in flight).

Trainers reach Redis over a datacenter network, not loopback, and this kernel has no ``netem``
qdisc to add delay, so the network benchmark goes through this proxy. Threads, not asyncio:
asyncio's epoll timeouts are rounded up to whole milliseconds, too coarse for 0.25 ms. It only
listens on loopback. Stdlib only: the benchmarks import it too.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

from tests.support.tcp_proxy import TcpProxy

_STOP = object()


class DelayProxy(TcpProxy):
    """Forward 127.0.0.1:<port> to ``upstream``, holding each direction for ``delay`` seconds."""

    def __init__(self, upstream_port: int, delay: float, upstream_host: str = "127.0.0.1") -> None:
        if not 0 <= delay <= 10:
            raise ValueError(f"delay must be from 0 to 10 seconds, got {delay!r}")
        super().__init__(upstream_port, upstream_host)
        self.delay = delay
        #: Connections accepted so far.
        self.connections = 0

    def _accepted(self, client: socket.socket) -> None:
        upstream = self._connect_upstream(client)
        if upstream is None:
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
        self._track(client, upstream)
        for source, target in ((client, upstream), (upstream, client)):
            held: queue.Queue[object] = queue.Queue()
            threading.Thread(target=self._read, args=(source, held), daemon=True).start()
            threading.Thread(target=self._deliver, args=(held, target), daemon=True).start()

    def _read(self, source: socket.socket, held: queue.Queue[object]) -> None:
        """Stamp each chunk with the time it may leave."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                held.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        held.put(_STOP)

    def _deliver(self, held: queue.Queue[object], target: socket.socket) -> None:
        """Pass chunks on in order, each no earlier than its time."""
        try:
            while True:
                item = held.get()
                if item is _STOP:
                    break
                due, data = item  # type: ignore[misc]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
