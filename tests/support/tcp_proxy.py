"""The accept loop the test proxies share (``DelayProxy``, ``DropProxy``, ``LagProxy``): listen
on a free loopback port, hand each accepted connection to the subclass, and on ``stop()`` close
the listener and every socket the subclass tracked. Each subclass only says what it does with a
connection (``_accepted``). Stdlib only: the benchmarks import the proxies too."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TypeVar

P = TypeVar("P", bound="TcpProxy")


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``upstream``; what happens on the way is the subclass's."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accepted(self, client: socket.socket) -> None:
        """Handle a new connection (on the accept thread: hand long work to a thread)."""
        raise NotImplementedError

    def _connect_upstream(self, client: socket.socket) -> socket.socket | None:
        """A connection to the upstream for ``client``, or None (``client`` is then closed)."""
        try:
            return socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return None

    def _track(self, *sockets: socket.socket) -> None:
        """Close these sockets on ``stop()``."""
        with self._lock:
            self._sockets.update(sockets)

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(client)

    def start(self: P) -> P:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def __enter__(self: P) -> P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
