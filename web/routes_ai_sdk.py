"""The Vercel AI SDK's chat transports, so a `useChat` frontend needs no adapter.

    POST /v1/ai-sdk/chat                    DefaultChatTransport({api: ".../v1/ai-sdk/chat"})
        the SDK's body (`id`, `messages` as UI messages, `trigger`, plus the app's own body
        fields: max_tokens, temperature, ..., resumable) -> the UI message stream over SSE
        (`x-vercel-ai-ui-message-stream: v1`), ending with `data: [DONE]`.
    GET /v1/ai-sdk/chat/{chat_id}/stream    the transport's reconnectToStream (useChat's
        `resume`): a full replay of the chat's latest resumable stream, then live; 204 when
        the chat has none held.
    WS /v1/ai-sdk/ws                        WebSocketChatTransport({url: ".../v1/ai-sdk/ws"}):
        send / resume / abort (streaming/ai_sdk_ws.py).

A chat's stream is resumable as any other (web/resumable.py): with `"resumable": true` in the
app's body or the server's `--resume-window-s`; the chat id names its latest stream, per key.
Over HTTP the SDK aborts by dropping the connection, which stops a plain stream's generation;
a resumable one outlives drops by design, so it is stopped with DELETE /v1/streams/{messageId}
or the WebSocket transport's abort.
"""

from __future__ import annotations

import functools
from typing import Any

from quart import Quart, Response, request

from triode.streaming.ai_sdk_ws import AiSdkChatSession
from triode.streaming.stream_store import StreamStore
from triode.streaming.ws_mux import WebSocketMux
from triode.streaming.ws_session import Generation as SessionGeneration
from triode.web.access import bearer_token
from triode.web.errors import api_error_from
from triode.web.generation import Generation
from triode.web.prepare import PreparedRequest
from triode.web.resumable import (
    SSE_STYLES,
    UI_MESSAGE,
    StreamFollower,
    open_reader,
    owner_of,
    resume_window,
    sse_body,
)
from triode.web.routes_openai import sse_response
from triode.web.routes_ws import QuartTransport, serve_websocket
from triode.web.state import AppState
from triode.web.ui_message_records import UIMessageRecords
from triode.web.ui_messages import prepare_ui_chat

AI_SDK_SUBPROTOCOL = "triode"


async def start_ui_chat(
    state: AppState, body: bytes | dict[str, Any], owner: str | None
) -> SessionGeneration:
    """Prepare and submit a chat turn; a resumable one is handed to the stream store and
    followed by a reader (closing which only detaches)."""

    def window_of(prepared: PreparedRequest) -> float | None:
        return resume_window(state.config, prepared.resumable, prepared.resume_window_s)

    generation = await Generation.create_with(
        state.engine, functools.partial(prepare_ui_chat, body), check=window_of
    )
    source = UIMessageRecords(generation)
    window = window_of(generation.prepared)
    if window is None:
        return source
    try:
        reader = state.streams.start(
            generation.prepared.response_id,
            UI_MESSAGE,
            source,
            owner=owner,
            window_s=window,
            alias=generation.prepared.alias,
        )
    except BaseException:
        await generation.aclose()
        raise
    return StreamFollower(state.streams, reader, lambda: generation.usage)


def resume_ui_chat(store: StreamStore, chat_id: str, owner: str | None, after: int = -1):
    """A follower of the chat's latest held stream, or None."""
    stream = store.get_alias(chat_id, owner)
    if stream is None or stream.is_removed:
        return None
    return StreamFollower(store, open_reader(store, stream, after))


class AiSdkBackend:
    def __init__(self, state: AppState, owner: str | None) -> None:
        self._state = state
        self._owner = owner

    async def start(self, body: dict[str, Any]) -> SessionGeneration:
        return await start_ui_chat(self._state, body, self._owner)

    async def resume(self, chat_id: str, after: int) -> SessionGeneration | None:
        return resume_ui_chat(self._state.streams, chat_id, self._owner, after)

    def error_text(self, exc: BaseException) -> str:
        return api_error_from(exc).message


def register_ai_sdk_routes(app: Quart, state: AppState) -> None:
    style = SSE_STYLES[UI_MESSAGE]

    def owner() -> str | None:
        return owner_of(state.config.api_key, [bearer_token(request.headers)])

    @app.post("/v1/ai-sdk/chat")
    async def ai_sdk_chat() -> Response:
        state.engine.check_serving()
        body = await request.get_data(as_text=False)
        generation = await start_ui_chat(state, body, owner())
        request.cleanups.append(generation.aclose)  # type: ignore[attr-defined]
        return sse_response(sse_body(generation, style.done, generation.aclose), style.headers)

    @app.get("/v1/ai-sdk/chat/<chat_id>/stream")
    async def ai_sdk_reconnect(chat_id: str) -> Response:
        follower = resume_ui_chat(state.streams, chat_id, owner())
        if follower is None:
            return Response(b"", status=204)
        request.cleanups.append(follower.aclose)  # type: ignore[attr-defined]
        return sse_response(sse_body(follower, style.done, follower.aclose), style.headers)

    @app.websocket("/v1/ai-sdk/ws")
    async def ai_sdk_ws() -> Response | None:
        def session(owner: str | None) -> WebSocketMux:
            backend = AiSdkBackend(state, owner)
            return AiSdkChatSession(QuartTransport(), backend, state.ws_limits)

        return await serve_websocket(state, session, AI_SDK_SUBPROTOCOL)
