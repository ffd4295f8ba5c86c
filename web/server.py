"""serve(): the engine task and hypercorn's trio worker in one nursery, with graceful shutdown.

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, EngineConfig(), ServerConfig(port=0), stop.wait)

Start-up: the socket is bound first (so /health can say 503 while the model loads), then the
engine loads in a thread; `started()` fires once both are ready. A model that fails to load
stops the server with EngineLoadError. Shutdown, when `shutdown_trigger` returns: stop accepting
connections, refuse new requests with 503, let in-flight ones finish for `shutdown_timeout_s`,
then end the rest (streams get an error chunk and [DONE], sockets close with 1001), then stop
the engine, which releases every request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from triode.engine.async_engine import AsyncEngine
from triode.engine.config import EngineConfig
from triode.web.app import TriodeApp, create_app
from triode.web.send_timeout import abandon_stalled_sends, install_send_timeout
from triode.web.state import AppState, ServerConfig

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

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/v1/ws"


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hconfig = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hconfig.bind = [f"{host}:{config.port}"]
    hconfig.graceful_timeout = config.shutdown_timeout_s + _FLUSH_GRACE_S
    hconfig.keep_alive_timeout = config.keep_alive_timeout_s
    hconfig.backlog = config.backlog
    hconfig.websocket_max_message_size = config.max_request_bytes
    hconfig.send_timeout_s = config.send_timeout_s  # read by TimedSendTCPServer
    # Loggers, not "-": records go through the root handler once, in our format.
    hconfig.accesslog = logging.getLogger("hypercorn.access") if config.access_log else None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


async def serve(
    engine_config: EngineConfig,
    server_config: ServerConfig,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    *,
    engine: AsyncEngine | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns (forever if None), then shut down gracefully."""
    install_send_timeout()
    state = AppState.create(engine or AsyncEngine(engine_config), server_config)
    app = create_app(state)
    engine_loaded = trio.Event()
    engine_stopped = trio.Event()
    is_started = False

    async with trio.open_nursery() as nursery:

        async def trigger() -> None:
            await (shutdown_trigger or trio.sleep_forever)()
            logger.info("shutting down: refusing new requests, finishing in-flight ones")
            state.draining.set()
            nursery.start_soon(_end_stragglers, state)

        async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await hypercorn.trio.serve(
                    app, hypercorn_config(server_config), shutdown_trigger=trigger,
                    task_status=task_status,
                )  # fmt: skip
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_ENGINE_STOP_TIMEOUT_S):
                    await state.engine.shutdown()
                    await engine_stopped.wait()
                nursery.cancel_scope.cancel()  # the straggler timer, if still waiting

        nursery.start_soon(_run_engine, state, engine_loaded, engine_stopped)
        binds = await nursery.start(run_http)
        await engine_loaded.wait()
        if state.engine_error is not None:
            nursery.cancel_scope.cancel()
        else:
            url = next((b for b in binds if b.startswith("http://")), binds[0])
            logger.info("serving %s on %s", state.engine.engine.model_name, url)
            task_status.started(RunningServer(url, state, app))
            is_started = True
    if state.engine_error is not None and not is_started:  # out here: not wrapped in a group
        raise EngineLoadError(state.engine_error)


async def _run_engine(state: AppState, loaded: trio.Event, stopped: trio.Event) -> None:
    """The engine's supervisor: its failure is recorded (and /health says so), never raised
    into the server's nursery, where it would take the open connections down with it."""
    try:
        await _start_engine(state, loaded)
    except Exception as exc:
        when = "while running" if loaded.is_set() else "to load"
        logger.exception("the engine failed %s", when)
        state.engine_error = f"{type(exc).__name__}: {exc}"
    finally:
        loaded.set()
        stopped.set()


async def _start_engine(state: AppState, loaded: trio.Event) -> None:
    # Awaited directly rather than through nursery.start, so a load failure arrives as itself
    # instead of wrapped in a nursery's exception group.
    await state.engine.run(task_status=_SetOnStart(loaded))
    # run() returned: shut down, or the engine died (it stays dead; /health reports it).


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
    await trio.sleep(_FLUSH_GRACE_S)
    abandon_stalled_sends()  # clients that stopped reading would otherwise hold us forever
