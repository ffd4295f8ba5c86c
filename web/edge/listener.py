"""serve_edge: accept connections and serve each as an EdgeConnection, with a bounded shutdown.

It takes the place of `hypercorn.trio.serve`, whose connection class cannot be chosen (the only
hook was rebinding `hypercorn.trio.run.TCPServer` for the whole process). hypercorn still does
the HTTP/1.1 and WebSocket protocol work and the ASGI lifespan; this module owns the sockets.

Shutdown, when `shutdown_trigger` returns: stop accepting, close idle keep-alive connections,
let the others finish for `graceful_timeout_s`, then cut what is left: every socket is closed
(which also ends writes blocked on a peer that stopped reading) and every connection task is
cancelled. A cancellation from outside (a second Ctrl-C) cuts at once the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config, Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, LifespanState
from hypercorn.utils import repr_socket_addr

from triode.web.edge.connection import EdgeConnection
from triode.web.edge.hypercorn_compat import hypercorn_problems
from triode.web.edge.limits import EdgeLimits

logger = logging.getLogger(__name__)


async def serve_edge(
    app: ASGIFramework,
    config: Config,
    limits: EdgeLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    sockets: Sockets | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `config.bind` (or on `sockets`, already bound) until `shutdown_trigger`
    returns; `task_status.started` gets the URLs bound, e.g. ["http://127.0.0.1:8000"]."""
    for problem in hypercorn_problems():
        logger.warning(
            "%s: the HTTP edge may misbehave (see web/edge/hypercorn_compat.py)", problem
        )
    wrapped = ASGIWrapper(app)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connections = _OpenConnections()

    async def serve_connection(stream: trio.SocketStream) -> None:
        connection = EdgeConnection(wrapped, config, limits, context, lifespan_state, stream)
        connections.add(connection)
        try:
            await connection.run()
        finally:
            connections.discard(connection)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        if sockets is None:
            sockets = config.create_sockets()
        listeners = []
        binds = []
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")

        async with trio.open_nursery() as connection_nursery:
            try:
                async with trio.open_nursery() as accept_nursery:
                    accept_nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            serve_connection,
                            listeners,
                            handler_nursery=connection_nursery,
                        )
                    )
                    task_status.started(binds)
                    await shutdown_trigger()
                    accept_nursery.cancel_scope.cancel()  # closes the listening sockets
                await context.terminated.set()  # idle keep-alive connections close now
                with trio.move_on_after(limits.graceful_timeout_s):
                    await connections.wait_empty()
                if connections.count:
                    logger.info("cutting %d connections still open", connections.count)
            finally:
                # Reached at the graceful deadline or on a cancellation from outside.
                connections.abort_all()
                connection_nursery.cancel_scope.cancel()

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class _OpenConnections:
    """The connections being served, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._items: set[EdgeConnection] = set()
        self._is_empty = trio.Event()
        self._is_empty.set()

    @property
    def count(self) -> int:
        return len(self._items)

    def add(self, connection: EdgeConnection) -> None:
        if not self._items:
            self._is_empty = trio.Event()
        self._items.add(connection)

    def discard(self, connection: EdgeConnection) -> None:
        self._items.discard(connection)
        if not self._items:
            self._is_empty.set()

    async def wait_empty(self) -> None:
        while self._items:
            await self._is_empty.wait()

    def abort_all(self) -> None:
        for connection in list(self._items):
            connection.abort()
