"""WebSocket transport: triode's `/v1/ws` protocol (see streaming/ws_session.py).

Sockets are pooled: a request takes a socket with fewer than `generations_per_socket` running
generations (1 by default: one generation per socket at a time), opening a new one when none
has room; idle sockets stay open for the next request (unless `reuse_sockets` is off). One dispatcher task per socket routes
incoming messages to their generation by id over a small bounded channel, so a generation that
stops reading also stops its socket being read (TCP pushes back on the server, as it would for
a slow browser). A generation that ends early (abandoned, timed out) closes its socket when it
is the socket's only one, and otherwise sends `cancel`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from triode.load_tests.record import (
    CONNECT,
    CONNECTION_LOST,
    MID_STREAM,
    PROTOCOL,
    REJECTED,
    Abandoned,
    RequestRecorder,
)
from triode.load_tests.workload import WS_TYPES, RequestSpec, SamplingOptions

_ROUTE_BUFFER = 16  # messages queued per generation before its socket stops being read
_CLOSE_TIMEOUT_S = 2.0


class _ConnectFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


@dataclass(eq=False)
class _Socket:
    ws: WebSocketConnection | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    failure: _ConnectFailed | None = None
    connect_s: float | None = None  # TCP connect and upgrade handshake
    num_active: int = 0
    is_dead: bool = False
    routes: dict[int, trio.MemorySendChannel[dict[str, Any]]] = field(default_factory=dict)


class WSTransport:
    """A pool of WebSockets; see the module docstring. Made by `open_ws_transport`."""

    name = "ws"

    def __init__(
        self,
        nursery: trio.Nursery,
        ws_url: str,
        options: SamplingOptions,
        *,
        api_key: str | None = None,
        generations_per_socket: int = 1,
        reuse_sockets: bool = True,
        connect_timeout_s: float = 60.0,
    ) -> None:
        if generations_per_socket < 1:
            raise ValueError("generations_per_socket must be at least 1")
        self._nursery = nursery
        self._url = ws_url
        self._options = options
        self._headers = [(b"authorization", f"Bearer {api_key}".encode())] if api_key else None
        self._per_socket = generations_per_socket
        self._reuse_sockets = reuse_sockets  # False: a fresh socket for every request
        self._connect_timeout_s = connect_timeout_s
        self._available: dict[_Socket, None] = {}  # sockets with room, oldest first
        self._sockets: set[_Socket] = set()
        self._ids = itertools.count()
        self.num_opened = 0

    async def send(self, spec: RequestSpec, recorder: RequestRecorder) -> None:
        """Run one request to its end (or failure), feeding `recorder`."""
        try:
            sock, is_new = await self._acquire()
        except _ConnectFailed as failure:
            recorder.fail(failure.kind, failure.detail)
            return
        if is_new:
            recorder.record.connect_s = sock.connect_s
        gen_id = next(self._ids)
        route_send, route_receive = trio.open_memory_channel[dict[str, Any]](_ROUTE_BUFFER)
        sock.routes[gen_id] = route_send
        is_ended = False
        message = {
            "type": WS_TYPES[spec.endpoint],
            "id": gen_id,
            "request": spec.body(self._options),
        }
        try:
            with route_receive:
                assert sock.ws is not None
                await sock.ws.send_message(orjson.dumps(message).decode())
                async for reply in route_receive:
                    is_ended = await _handle_reply(reply, recorder)
                    if is_ended:
                        return
            recorder.fail(CONNECTION_LOST, _close_reason(sock))
            is_ended = True  # the socket is gone: nothing left to cancel
        except Abandoned:
            pass
        except ConnectionClosed:
            recorder.fail(CONNECTION_LOST, _close_reason(sock))
            is_ended = True
        finally:
            del sock.routes[gen_id]
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                # Left early (abandoned, timed out): the server must stop generating.
                if sock.num_active == 1 and not (is_ended and self._reuse_sockets):
                    await self._close_socket(sock)
                elif not is_ended:
                    await self._send_cancel(sock, gen_id)
            self._release(sock)

    async def aclose(self) -> None:
        async with trio.open_nursery() as nursery:
            for sock in list(self._sockets):
                nursery.start_soon(self._close_socket, sock)

    # ---- the pool -----------------------------------------------------------------------------
    async def _acquire(self) -> tuple[_Socket, bool]:
        """A socket with room, and whether this request opened it."""
        sock = next(iter(self._available), None)
        is_new = sock is None
        if sock is None:
            sock = _Socket()
            self._sockets.add(sock)
            self._available[sock] = None
            self._nursery.start_soon(self._serve_socket, sock)
        sock.num_active += 1
        if sock.num_active >= self._per_socket:
            self._available.pop(sock, None)
        try:
            await sock.ready.wait()
        except BaseException:  # cancelled (timed out) while the socket opens
            self._release(sock)
            raise
        if sock.failure is not None:
            sock.num_active -= 1
            raise sock.failure
        return sock, is_new

    def _release(self, sock: _Socket) -> None:
        sock.num_active -= 1
        if not sock.is_dead:
            self._available[sock] = None

    async def _serve_socket(self, sock: _Socket) -> None:
        """The socket's life, in its own task of the pool's nursery (it outlives the request
        that opened it): connect, then route messages until it closes."""
        started = time.perf_counter()
        try:
            async with open_websocket_url(
                self._url,
                extra_headers=self._headers,
                connect_timeout=self._connect_timeout_s,
                disconnect_timeout=_CLOSE_TIMEOUT_S,
            ) as ws:
                sock.ws = ws
                sock.connect_s = time.perf_counter() - started
                self.num_opened += 1
                sock.ready.set()
                await self._dispatch(sock, ws)
        except ConnectionRejected as exc:
            body = (exc.body or b"").decode(errors="replace")
            sock.failure = _ConnectFailed(f"http_{exc.status_code}", body)
        except (HandshakeError, OSError) as exc:  # after opening: a close that timed out
            if sock.ws is None:
                sock.failure = _ConnectFailed(CONNECT, repr(exc))
        finally:
            self._forget(sock)
            for route in sock.routes.values():
                route.close()
            sock.ready.set()

    async def _dispatch(self, sock: _Socket, ws: WebSocketConnection) -> None:
        try:
            while True:
                raw = await ws.get_message()
                try:
                    reply = orjson.loads(raw)
                    route = sock.routes.get(reply.get("id"))
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    route = None  # nothing of ours; a generation waiting on it times out
                if route is None:  # also a late message for a generation that has left
                    continue
                with contextlib.suppress(trio.BrokenResourceError):
                    await route.send(reply)  # blocks while that generation is not reading
        except ConnectionClosed:
            pass

    def _forget(self, sock: _Socket) -> None:
        sock.is_dead = True
        self._available.pop(sock, None)
        self._sockets.discard(sock)

    async def _send_cancel(self, sock: _Socket, gen_id: int) -> None:
        if sock.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await sock.ws.send_message(orjson.dumps({"type": "cancel", "id": gen_id}).decode())

    async def _close_socket(self, sock: _Socket) -> None:
        self._forget(sock)
        if sock.ws is not None:
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                await sock.ws.aclose()


async def _handle_reply(reply: dict[str, Any], recorder: RequestRecorder) -> bool:
    """Feed one server message to the recorder; True once the generation has ended."""
    kind = reply.get("type")
    if kind == "chunk":
        chunk = reply.get("chunk") or {}
        recorder.on_usage(chunk.get("usage"))
        await recorder.on_chunk(chunk)
        return False
    if kind == "done":
        recorder.on_usage(reply.get("usage"))
        recorder.finish()
        return True
    if kind == "error":
        error = orjson.dumps(reply.get("error")).decode()
        recorder.fail(MID_STREAM if recorder.record.chunk_times else REJECTED, error)
        return True
    recorder.fail(PROTOCOL, f"unexpected message: {str(reply)[:100]}")
    return True


def _close_reason(sock: _Socket) -> str:
    reason = sock.ws.closed if sock.ws is not None else None
    return f"the socket closed: {reason}" if reason else "the socket closed"


@asynccontextmanager
async def open_ws_transport(
    ws_url: str, options: SamplingOptions, **kwargs: Any
) -> AsyncIterator[WSTransport]:
    """A WSTransport whose sockets are closed when the block ends."""
    async with trio.open_nursery() as nursery:
        transport = WSTransport(nursery, ws_url, options, **kwargs)
        try:
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
            nursery.cancel_scope.cancel()
