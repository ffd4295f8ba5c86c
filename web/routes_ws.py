"""The WebSocket route /v1/ws: the handshake checks, then a streaming.WebSocketSession.

The handshake is refused with an HTTP response (OpenAI error body) before it is accepted:
401 without a valid key, 403 for a refused origin, 503 when the connection limit is reached or
the server is shutting down. The protocol itself is documented in streaming/ws_session.py and
README.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Quart, Response, websocket

from triode.engine import EngineNotReadyError
from triode.streaming.ws_mux import WebSocketMux
from triode.streaming.ws_session import Generation, WebSocketSession
from triode.web.access import (
    check_key,
    is_origin_allowed,
    origin_refused,
    websocket_key_candidates,
)
from triode.web.errors import api_error_from, service_unavailable
from triode.web.generation import Generation as EngineGeneration
from triode.web.openai_records import OpenAIRecords
from triode.web.prepare import PreparedRequest
from triode.web.resumable import (
    OPENAI,
    StreamFollower,
    find_stream,
    open_reader,
    owner_of,
    resume_window,
)
from triode.web.state import AppState

SUBPROTOCOL = "triode"
# NOTE: 1001 "going away" tells clients the close is the server's shutdown, not an error.
CLOSE_GOING_AWAY = 1001


class EngineBackend:
    """What a generation is, for the WebSocket session: the same path as the HTTP routes.
    `owner` is the socket's key (resumable streams belong to it)."""

    def __init__(self, state: AppState, owner: str | None) -> None:
        self._state = state
        self._owner = owner

    async def start(self, kind: str, request: dict[str, Any]) -> Generation:
        state = self._state

        def window_of(prepared: PreparedRequest) -> float | None:
            return resume_window(state.config, prepared.resumable, prepared.resume_window_s)

        # A WebSocket always streams; `stream` in the body changes nothing.
        generation = await EngineGeneration.create(
            state.engine,
            kind,
            {**request, "stream": True},
            check=window_of,
            tool_call_parser=state.config.tool_call_parser,
        )
        source = OpenAIRecords(generation)
        window = window_of(generation.prepared)
        if window is None:
            return source
        try:
            reader = state.streams.start(
                generation.prepared.response_id, OPENAI, source, owner=self._owner, window_s=window
            )
        except BaseException:
            await generation.aclose()
            raise
        return StreamFollower(state.streams, reader, lambda: generation.usage)

    async def resume(self, stream_id: str, after: int) -> Generation:
        store = self._state.streams
        stream = find_stream(store, stream_id, self._owner)
        return StreamFollower(store, open_reader(store, stream, after))

    def error_object(self, exc: BaseException) -> dict[str, Any]:
        return api_error_from(exc).to_object()


class QuartTransport:
    """The session's view of Quart's websocket object."""

    async def send(self, data: str) -> None:
        await websocket.send(data)

    async def receive(self) -> str | bytes:
        return await websocket.receive()


def register_ws_route(app: Quart, state: AppState) -> None:
    @app.websocket("/v1/ws")
    async def ws() -> Response | None:
        def session(owner: str | None) -> WebSocketMux:
            return WebSocketSession(QuartTransport(), EngineBackend(state, owner), state.ws_limits)

        return await serve_websocket(state, session, SUBPROTOCOL)


async def serve_websocket(
    state: AppState, make_session: Callable[[str | None], WebSocketMux], subprotocol: str
) -> Response | None:
    """The handshake checks, then `make_session(owner)` runs until the socket ends. `owner`
    identifies the key the client sent (None without --api-key)."""
    headers = websocket.headers
    origin = headers.get("Origin")
    if not is_origin_allowed(origin, headers.get("Host"), state.config.allowed_origins):
        return origin_refused(origin or "").to_response()
    candidates = websocket_key_candidates(
        headers, websocket.args.get("api_key"), websocket.requested_subprotocols
    )
    refusal = check_key(state.config.api_key, candidates)
    if refusal is not None:
        return refusal.to_response()
    if state.engine.draining.is_set():
        try:
            state.engine.check_serving()
        except EngineNotReadyError as exc:  # says why: shutting down, or the engine failed
            return api_error_from(exc).to_response()
    limits = state.ws_limits
    if not limits.can_open_connection():
        return service_unavailable(
            f"too many WebSocket connections (limit {limits.max_connections})",
            "too_many_connections",
            1,
        ).to_response()
    limits.open_connection()
    try:
        offered = websocket.requested_subprotocols
        await websocket.accept(subprotocol=subprotocol if subprotocol in offered else None)
        session = make_session(owner_of(state.config.api_key, candidates))
        await session.run(draining=state.engine.draining)
        # Only a draining server ends a session while the peer is still there.
        await websocket.close(CLOSE_GOING_AWAY, "the server is shutting down")
    finally:
        limits.close_connection()
    return None
