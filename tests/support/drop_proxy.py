"""A TCP proxy that loses replies: it forwards a request to Redis, waits until the reply starts
coming back (so the command has run), then drops the connection instead of forwarding it.

That is the worst case for a retried write: the client cannot tell whether its command ran.
Used by the exactly-once tests and the soak benchmark; it only listens on loopback.
"""

from __future__ import annotations

import random
import select
import socket
import threading

from tests.support.tcp_proxy import TcpProxy


class DropProxy(TcpProxy):
    """Forward 127.0.0.1:<port> to ``upstream``; drop the reply to a request containing
    ``trigger`` with probability ``drop_rate`` (seeded, so runs repeat)."""

    def __init__(self, upstream_port: int, drop_rate: float = 0.05, trigger: bytes = b"EVALSHA",
                 seed: int = 0, upstream_host: str = "127.0.0.1", hold: float = 0.0) -> None:
        super().__init__(upstream_port, upstream_host)
        #: Seconds to sit on a reply before dropping it: long enough, a client's own timeout
        #: (``asyncio.wait_for``) cancels the call first.
        self.hold = hold
        self.drop_rate = drop_rate
        self.trigger = trigger
        self._random = random.Random(seed)
        self.drops = 0
        self.forwarded = 0

    def _should_drop(self) -> bool:
        with self._lock:
            return self._random.random() < self.drop_rate

    def _accepted(self, client: socket.socket) -> None:
        threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = self._connect_upstream(client)
        if upstream is None:
            return
        drop_next_reply = False
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    if self.trigger in data and self._should_drop():
                        drop_next_reply = True
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if drop_next_reply:
                        with self._lock:
                            self.drops += 1
                        self._stopping.wait(self.hold)
                        return  # the command ran; its reply is lost with the connection
                    with self._lock:
                        self.forwarded += 1
                    client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()
