"""serve(): the engine task and the HTTP/WebSocket edge in one nursery, with graceful shutdown.

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, EngineConfig(), ServerConfig(port=0), stop.wait)

Start-up: the socket is bound first (a busy port fails at once, with ListenError, before
anything loads), the edge starts serving it (so /health can say 503 while the model loads),
then the engine loads in a thread; `started()` fires once both are ready. A model that fails to
load stops the server with EngineLoadError. Shutdown, when `shutdown_trigger` returns: the
engine starts draining (new requests get 503), the edge stops accepting connections,
in-flight requests may finish for `shutdown_timeout_s`, then the rest end (streams get an
error chunk and [DONE], sockets close with 1001) and the engine stops, releasing everything.
Connections still open after the flush grace (clients that stopped reading) are cut by the edge
(web/edge/listener.py).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig

from triode.engine import AsyncEngine, EngineConfig, EngineState
from triode.web.app import TriodeApp, create_app
from triode.web.edge import EdgeLimits, serve_edge
from triode.web.heartbeat import Heartbeat
from triode.web.listen import open_listen_socket
from triode.web.state import AppState, ServerConfig
from triode.web.stats_log import log_stats_periodically

logger = logging.getLogger(__name__)

# Time for the streams ended at the shutdown deadline to flush their last chunks.
_FLUSH_GRACE_S = 2.0
_ENGINE_STOP_TIMEOUT_S = 30.0


class EngineLoadError(RuntimeError):
    """The model could not be loaded; the server does not start."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    url: str  # http://host:port
    state: AppState
    app: TriodeApp
    heartbeat: Heartbeat  # how long the event loop has been blocked, at most

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/v1/ws"


def hypercorn_config(config: ServerConfig, listen_fd: int | None = None) -> HypercornConfig:
    hconfig = HypercornConfig()
    if listen_fd is not None:
        hconfig.bind = [f"fd://{listen_fd}"]
    else:
        host = f"[{config.host}]" if ":" in config.host else config.host
        hconfig.bind = [f"{host}:{config.port}"]
    hconfig.keep_alive_timeout = config.keep_alive_timeout_s
    hconfig.backlog = config.backlog
    hconfig.websocket_max_message_size = config.max_request_bytes
    # Loggers, not "-": records go through the root handler once, in our format.
    hconfig.accesslog = logging.getLogger("hypercorn.access") if config.access_log else None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


def edge_limits(config: ServerConfig) -> EdgeLimits:
    return EdgeLimits(
        keep_alive_timeout_s=config.keep_alive_timeout_s,
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        send_timeout_s=config.send_timeout_s,
        graceful_timeout_s=config.shutdown_timeout_s + _FLUSH_GRACE_S,
    )


async def serve(
    engine_config: EngineConfig,
    server_config: ServerConfig,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    *,
    engine: AsyncEngine | None = None,
    listen_socket: socket.socket | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (forever if None), then shut down gracefully.

    `listen_socket`: a socket already bound (by `open_listen_socket`); by default one is bound
    here for `server_config.host` and `port`, raising ListenError before anything starts.
    """
    sock = listen_socket or open_listen_socket(server_config.host, server_config.port)
    state = AppState.create(engine or AsyncEngine(engine_config), server_config)
    app = create_app(state)
    heartbeat = Heartbeat()
    engine_loaded = trio.Event()
    engine_stopped = trio.Event()
    is_started = False
    # NOTE: the edge gets a duplicate descriptor of the bound socket (hypercorn's `fd://` bind)
    # and owns it; ours is closed once the edge listens (both name the same socket).
    listen_fd = os.dup(sock.fileno())

    async with trio.open_nursery() as nursery:

        async def trigger() -> None:
            await (shutdown_trigger or trio.sleep_forever)()
            logger.info("shutting down: refusing new requests, finishing in-flight ones")
            state.engine.begin_draining()
            nursery.start_soon(_end_stragglers, state)

        async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_edge(
                    app, hypercorn_config(server_config, listen_fd), edge_limits(server_config),
                    shutdown_trigger=trigger, task_status=task_status,
                )  # fmt: skip
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_ENGINE_STOP_TIMEOUT_S):
                    await state.engine.shutdown()
                    await engine_stopped.wait()
                nursery.cancel_scope.cancel()  # the straggler timer, if still waiting

        # Resumable streams' tasks: cancelled with the server, after hypercorn has stopped.
        await nursery.start(state.streams.run)
        try:
            binds = await nursery.start(run_http)
        finally:
            sock.close()
        nursery.start_soon(_run_engine, state.engine, engine_loaded, engine_stopped)
        await engine_loaded.wait()
        if state.engine.state is EngineState.DEAD:
            nursery.cancel_scope.cancel()
        else:
            _freeze_startup_objects()
            # Started only now: loading (imports, weights) may block the loop; serving must not.
            await nursery.start(heartbeat.run)
            url = next((b for b in binds if b.startswith("http://")), binds[0])
            info = state.engine.model_info
            logger.info("serving %s on %s (%s)", info.name, url, describe_weights(info.weights))
            if server_config.stats_log_interval_s > 0:
                nursery.start_soon(
                    log_stats_periodically, state.engine, server_config.stats_log_interval_s
                )
            task_status.started(RunningServer(url, state, app, heartbeat))
            is_started = True
    if not is_started and state.engine.state is EngineState.DEAD:  # out here: not in a group
        raise EngineLoadError(state.engine.dead_reason or "the engine failed to start")


def describe_weights(weights: dict) -> str:
    """One phrase for the start-up line: what the weights are served as, and their bytes."""
    if not weights:
        return "weights: unknown"
    source = ", ".join(f"{n} {t}" for t, n in sorted(weights.get("source_types", {}).items()))
    return (
        f"weights: {weights['quantization']}"
        + (f" ({source})" if source else "")
        + f", {weights['weight_bytes'] / 1e6:.1f} MB, {weights['bits_per_weight']:.2f} bits/weight"
        + f", {weights['dtype']} activations"
    )


def _freeze_startup_objects() -> None:
    """Exempt everything that exists once the model is loaded from garbage collection.

    NOTE: torch, transformers and the model leave millions of long-lived objects; a full
    collection walks them all, holding the GIL for ~0.3-0.5 s, which stalls the event loop and
    every stream. Frozen, they are never scanned again; collections then look only at what
    requests allocate, and take milliseconds (gc.freeze, as CPython's docs advise for servers).
    """
    gc.collect()
    gc.freeze()


async def _run_engine(engine: AsyncEngine, loaded: trio.Event, stopped: trio.Event) -> None:
    """The engine's supervisor: its failure is recorded by the actor (state DEAD, which
    /health reports), never raised into the server's nursery, where it would take the open
    connections down with it."""
    try:
        # Awaited directly rather than through nursery.start, so a load failure arrives as
        # itself instead of wrapped in a nursery's exception group.
        await engine.run(task_status=_SetOnStart(loaded))
    except Exception:
        when = "while running" if loaded.is_set() else "to load"
        logger.debug("the engine failed %s", when, exc_info=True)
    finally:
        loaded.set()
        stopped.set()


class _SetOnStart:
    """A task_status that sets an event when the engine reports it is ready."""

    def __init__(self, event: trio.Event) -> None:
        self._event = event

    def started(self, value: object = None) -> None:
        self._event.set()


async def _end_stragglers(state: AppState) -> None:
    await trio.sleep(state.config.shutdown_timeout_s)
    logger.info("shutdown timeout reached: ending the requests still in flight")
    await state.engine.shutdown()
