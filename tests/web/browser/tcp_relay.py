"""TcpRelay: a TCP relay on 127.0.0.1 in front of the real server, whose connections a test can
cut, as a lost network or a restarted proxy cuts them.

The browser loads the page through the relay, so every connection the page makes (the page,
its WebSocket, its fetches) runs through it; `cut()` ends them all at once, both ends reset
(the server sees its client go, the page sees its socket die without a close frame), and while
`refusing()` new connections are reset as soon as they arrive. Nothing else is changed: bytes
are copied as they come, in both directions.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

# SO_LINGER on with a zero timeout: close() resets the connection instead of a graceful FIN.
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    sock.close()


class _Pair:
    """A client connection and its upstream one; the second pump to finish closes both."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._lock = threading.Lock()
        self._num_pumps_done = 0

    def end(self, *, reset: bool = False) -> None:
        """Stop both directions (the pumps' reads return); `reset` makes the close a reset."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                sock.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> bool:
        with self._lock:
            self._num_pumps_done += 1
            is_last = self._num_pumps_done == 2
        if is_last:
            for sock in self.sockets:
                sock.close()
        return is_last


class TcpRelay:
    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._is_refusing = False
        self.num_refused = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            if self._is_refusing:
                self.num_refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        # One direction ended: end the other too (no half-open connections to reason about).
        pair.end()
        if pair.pump_done():
            with self._lock:
                self._pairs.discard(pair)

    def cut(self) -> int:
        """Reset every connection through the relay now; returns how many there were."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.end(reset=True)
        return len(pairs)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """New connections are reset on arrival inside the block (the server is unreachable)."""
        self._is_refusing = True
        try:
            yield
        finally:
            self._is_refusing = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self.cut()
        self._thread.join(5)
