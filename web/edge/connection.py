"""EdgeConnection: one client connection, hypercorn's HTTP/1.1 and WebSocket protocol over a trio
socket, with the guarantees hypercorn's own TCPServer lacks.

- Containment: whatever goes wrong on this connection (a protocol error h11 or wsproto raises
  inside hypercorn, a bug in a stream) ends this connection and nothing else. hypercorn lets
  such an error escape its connection handler into the server's nursery, which takes the whole
  server down (pgjones/hypercorn#225; the containment it merged in #228 was reverted).
- Read deadlines: a request head must arrive within `header_timeout_s` of its first byte and a
  body within `body_timeout_s` of its head, however the bytes are dribbled (hypercorn's
  `read_timeout` restarts on every byte). A late request gets 408 if no response has begun;
  otherwise the connection is dropped. A connection that sends nothing at all is closed after
  `keep_alive_timeout_s`, as in hypercorn.
- Write deadline: a chunk the peer does not accept within `send_timeout_s` closes the
  connection. Writes are shielded (a half-written chunk would corrupt the stream) but never
  unbounded: the deadline, or `abort()` at a hard stop, ends them.
- Bounded close: once closed, the socket's descriptor is released at once and the connection's
  tasks get `close_grace_s` to finish; then they are cancelled. No step of a close waits
  without a deadline, so a client that stops reading cannot pin a descriptor or a shutdown.
  After an error response the close lingers: our side is shut (FIN after the response) and
  input is read and dropped until the client closes, for at most `LINGER_S`. Closing at once
  with unread input would make the kernel reset the connection, and the client could lose the
  error response it was sent.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import h11
import trio
import wsproto.utilities
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr

from triode.web.edge.h11_protocol import EdgeH11Protocol
from triode.web.edge.limits import EdgeLimits

logger = logging.getLogger(__name__)

MAX_RECV = 2**16
LINGER_S = 2.0
_PROTOCOL_ERRORS = (h11.ProtocolError, wsproto.utilities.ProtocolError)


class EdgeConnection:
    """Serves one accepted socket until the connection ends; see the module docstring."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        limits: EdgeLimits,
        context: WorkerContext,
        lifespan_state: LifespanState,
        stream: trio.SocketStream,
    ) -> None:
        self.app = app
        self.config = config
        self.limits = limits
        self.context = context
        self.lifespan_state = lifespan_state
        self.stream = stream
        self.protocol: EdgeH11Protocol | None = None
        self._task_group: TaskGroup | None = None
        self._scope = trio.CancelScope()  # everything the connection runs
        self._send_lock = trio.Lock()
        self._idle_scope: trio.CancelScope | None = None
        self._is_closing = False  # no more writes; the protocol was told (or is being told)
        self._linger_until = math.inf  # when lingering after an error response: read until
        self._phase: str | None = None  # "head" or "body" while a request is arriving
        self._phase_since = 0.0

    async def run(self) -> None:
        """Serve until the connection ends. Raises nothing but cancellation: a failure here
        ends this connection only."""
        with self._scope:
            try:
                await self._serve()
            except* Exception as group:
                _log_failure(group)
            finally:
                self.abort()

    def abort(self) -> None:
        """Close the socket now: its descriptor is released, and every task blocked on it
        (a shielded write included) wakes with ClosedResourceError."""
        self._is_closing = True
        if self.stream.socket.fileno() != -1:
            self.stream.socket.close()

    # ---- hypercorn's protocol calls this for everything it sends ------------------------------
    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
        elif isinstance(event, Closed):
            await self._close()
        elif isinstance(event, Updated):
            if event.idle:
                self._restart_idle_timer()
            else:
                self._stop_idle_timer()

    # ---- internals ----------------------------------------------------------------------------
    async def _serve(self) -> None:
        sock = self.stream.socket
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
        except OSError:  # the peer left before we looked
            return
        async with TaskGroup() as task_group:
            self._task_group = task_group
            self.protocol = EdgeH11Protocol(
                self.app,
                self.config,
                self.context,
                task_group,
                ConnectionState(self.lifespan_state.copy()),
                False,  # no TLS at this edge
                client,
                server,
                self.protocol_send,
            )
            await self.protocol.initiate()
            self._restart_idle_timer()
            await self._read_loop()

    async def _read_loop(self) -> None:
        assert self.protocol is not None
        while True:
            deadline = self._linger_until if self._is_closing else self._read_deadline()
            with trio.move_on_at(deadline) as timer:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            if timer.cancelled_caught:
                if self._is_closing:
                    break  # lingered long enough
                await self._on_late_request()  # answers 408 (and lingers) or drops
                continue
            await self.protocol.handle(RawData(bytes(data)))  # dropped while lingering
            if not data:
                break
        await self.protocol.handle(Closed())

    def _read_deadline(self) -> float:
        """When the bytes now awaited are due: a request head or body has a deadline from
        when it began; between requests the idle timer rules, and a WebSocket has none."""
        phase = self._current_phase()
        if phase != self._phase:
            self._phase, self._phase_since = phase, trio.current_time()
        if phase == "head":
            return self._phase_since + self.limits.header_timeout_s
        if phase == "body":
            return self._phase_since + self.limits.body_timeout_s
        return math.inf

    def _current_phase(self) -> str | None:
        assert self.protocol is not None
        connection = self.protocol.connection
        if not isinstance(connection, h11.Connection):  # upgraded to a WebSocket
            return None
        if connection.their_state is h11.SEND_BODY:
            return "body"
        if connection.their_state is h11.IDLE and connection.trailing_data[0]:
            return "head"
        return None

    async def _on_late_request(self) -> None:
        assert self.protocol is not None
        part, limit = (
            ("head", self.limits.header_timeout_s)
            if self._phase == "head"
            else ("body", self.limits.body_timeout_s)
        )
        logger.info("closing a connection: its request %s took longer than %g s", part, limit)
        message = f"the request {part} did not arrive within {limit:g} s"
        await self.protocol.refuse(408, message, "request_timeout")  # closes either way

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            if self._is_closing:
                return  # nobody is left to read it
            # Shielded as hypercorn does (a half-written chunk would corrupt the stream), but
            # with a deadline of its own; abort() also ends it.
            deadline = trio.current_time() + self.limits.send_timeout_s
            with trio.CancelScope(deadline=deadline, shield=True) as scope:
                try:
                    await self.stream.send_all(data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        if scope.cancelled_caught:
            logger.info(
                "closing a connection whose client accepted no data for %g s",
                self.limits.send_timeout_s,
            )
        await self._close(is_peer_stalled=scope.cancelled_caught)

    async def _close(self, *, is_peer_stalled: bool = False) -> None:
        """Release the socket (or, after an error response, shut our side and linger) and tell
        the protocol, so the app sees a disconnect; the connection's tasks get
        `close_grace_s` to end, or none when the peer stalled (its queues are full, so the
        disconnect could not even be delivered)."""
        if self._is_closing or self.protocol is None:
            self.abort()
            return
        self._is_closing = True
        self._stop_idle_timer()
        if is_peer_stalled:
            self.abort()
            self._scope.cancel()
            return
        grace = self.limits.close_grace_s
        if self.protocol.is_ending:  # after an error response
            grace = LINGER_S
            self._linger_until = trio.current_time() + LINGER_S
            try:
                self.stream.socket.shutdown(trio.socket.SHUT_WR)
            except OSError:
                self.abort()
        else:
            self.abort()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)
        await self.protocol.handle(Closed())

    def _restart_idle_timer(self) -> None:
        self._stop_idle_timer()
        if self._task_group is None or self._is_closing:
            return
        scope = trio.CancelScope()
        self._idle_scope = scope
        self._task_group.spawn(self._idle_timeout, scope)

    def _stop_idle_timer(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.cancel()
            self._idle_scope = None

    async def _idle_timeout(self, scope: trio.CancelScope) -> None:
        with scope:
            with trio.move_on_after(self.limits.keep_alive_timeout_s):
                await self.context.terminated.wait()  # a shutdown closes idle connections now
        if not scope.cancel_called:  # still idle: no request came
            await self._close()


def _log_failure(group: BaseExceptionGroup[Any]) -> None:
    for exc in _leaves(group):
        if isinstance(exc, _PROTOCOL_ERRORS):
            logger.warning("closed a connection after a protocol error: %s", exc)
        else:
            logger.error("closed a connection after an unexpected error", exc_info=exc)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
