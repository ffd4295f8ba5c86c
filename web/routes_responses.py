"""OpenAI's Responses API: POST/GET/DELETE /v1/responses and its WebSocket mode.

    POST /v1/responses          a Response, or with `"stream": true` its SSE events
    GET /v1/responses/{id}      the stored Response (`"store": true`, the default; 404 once it
                                expired or was dropped for room, or for another API key);
                                `?stream=true&starting_after=N` replays a resumable stream's
                                events after N and continues live
    DELETE /v1/responses/{id}   forget a stored Response
    WS /v1/responses            `{"type": "response.create", ...the POST body...}` messages,
                                one response at a time per socket, answered with the stream's
                                events as messages (`error` events for refusals). A later turn
                                sends only its new input and `previous_response_id`: the socket
                                keeps its last response's conversation even with `store: false`.

A follow-up turn's prompt is the previous turn's conversation plus the new input, so the
prefix cache serves the earlier tokens' KV (`usage.input_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

import orjson
from quart import Quart, Response, request

from triode.engine import Preprocessor
from triode.streaming.records import RecordKind
from triode.streaming.ws_mux import Running, WebSocketMux
from triode.web.access import bearer_token
from triode.web.errors import ApiError, api_error_from, bad_request, json_response
from triode.web.generation import Generation
from triode.web.prepare import CHAT, PreparedRequest, check_model, prepare_request
from triode.web.protocol import parse_body
from triode.web.response_store import StoredResponse
from triode.web.responses_protocol import ResponsesRequest
from triode.web.responses_records import ResponsesRecords
from triode.web.resumable import (
    RESPONSES,
    SSE_STYLES,
    find_stream,
    open_reader,
    owner_of,
    resume_window,
    sse_body,
)
from triode.web.routes_openai import sse_response
from triode.web.routes_ws import QuartTransport, serve_websocket
from triode.web.state import AppState


def parse_responses_request(body: bytes | dict[str, Any], worker: Preprocessor) -> ResponsesRequest:
    request = parse_body(ResponsesRequest, body)
    check_model(worker.info.name, request.model)
    return request


def prepare_response_chat(
    request: ResponsesRequest, history: list[dict[str, str]], worker: Preprocessor
) -> PreparedRequest:
    """The turn as a chat request, under a Responses id (`resp_...`)."""
    prepared = prepare_request(CHAT, request.chat_body(history), worker)
    prepared.response_id = f"resp_{uuid.uuid4().hex}"
    return prepared


def previous_not_found(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"previous response {response_id!r} not found: it was not stored, expired, or belongs "
        "to another key",
        "invalid_request_error",
        "previous_response_id",
        "previous_response_not_found",
    )


def response_not_found(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"no response {response_id!r}: it was not stored, expired, or belongs to another key",
        "invalid_request_error",
        "id",
        "response_not_found",
    )


async def start_response(
    state: AppState,
    request: ResponsesRequest,
    owner: str | None,
    local: StoredResponse | None = None,
) -> tuple[ResponsesRecords, float | None]:
    """Submit a turn; returns its records and its resume window (None: a plain stream).
    `local` is a WebSocket's last response, found even when it was not stored."""
    history: list[dict[str, str]] = []
    if request.previous_response_id is not None:
        previous = state.responses.get(request.previous_response_id, owner)
        if previous is None and local and local.response["id"] == request.previous_response_id:
            previous = local
        if previous is None:
            raise previous_not_found(request.previous_response_id)
        history = previous.history

    def window_of(prepared: PreparedRequest) -> float | None:
        if not request.stream:
            return None
        return resume_window(state.config, prepared.resumable, prepared.resume_window_s)

    generation = await Generation.create_with(
        state.engine, functools.partial(prepare_response_chat, request, history), check=window_of
    )
    turn = [*history, *request.messages()]
    source = ResponsesRecords(generation, request, turn, state.responses, owner)
    return source, window_of(generation.prepared)


def register_responses_routes(app: Quart, state: AppState) -> None:
    style = SSE_STYLES[RESPONSES]

    def owner() -> str | None:
        return owner_of(state.config.api_key, [bearer_token(request.headers)])

    @app.post("/v1/responses")
    async def create_response() -> Response:
        state.engine.check_serving()
        body = await request.get_data(as_text=False)
        parsed = await state.engine.input_processor.run(
            functools.partial(parse_responses_request, body)
        )
        source, window = await start_response(state, parsed, owner())
        if window is not None:
            try:
                reader = state.streams.start(
                    source.response_id, RESPONSES, source, owner=owner(), window_s=window
                )
            except BaseException:
                await source.aclose()
                raise
            request.cleanups.append(reader.aclose)  # type: ignore[attr-defined]
            return sse_response(sse_body(reader, style.done, reader.aclose), style.headers)
        request.cleanups.append(source.aclose)  # type: ignore[attr-defined]
        if parsed.stream:
            return sse_response(sse_body(source, style.done, source.aclose), style.headers)
        try:
            async for _ in source:
                pass
        finally:
            await source.aclose()
        return json_response(source.response)

    @app.get("/v1/responses/<response_id>")
    async def retrieve_response(response_id: str) -> Response:
        if request.args.get("stream", "").lower() == "true":
            stream = find_stream(state.streams, response_id, owner())
            after = request.args.get("starting_after")
            try:
                number = -1 if after is None else int(after)
            except ValueError:
                raise bad_request("starting_after must be an integer", "starting_after") from None
            reader = open_reader(state.streams, stream, number)
            request.cleanups.append(reader.aclose)  # type: ignore[attr-defined]
            return sse_response(sse_body(reader, style.done, reader.aclose), style.headers)
        stored = state.responses.get(response_id, owner())
        if stored is None:
            raise response_not_found(response_id)
        return json_response(stored.response)

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        if not state.responses.delete(response_id, owner()):
            raise response_not_found(response_id)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    @app.websocket("/v1/responses")
    async def responses_ws() -> Response | None:
        def session(owner: str | None) -> WebSocketMux:
            return ResponsesSocket(QuartTransport(), state, owner)

        return await serve_websocket(state, session, "")


class ResponsesSocket(WebSocketMux):
    """The Responses API's WebSocket mode on one socket (one response at a time)."""

    KEY = "response"

    def __init__(self, transport: Any, state: AppState, owner: str | None) -> None:
        super().__init__(transport, state.ws_limits)
        self._state = state
        self._owner = owner
        self._last: StoredResponse | None = None

    async def on_bad_message(self, error: dict[str, Any]) -> None:
        await self._send_error(error)

    async def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind != "response.create":
            await self._send_error({"message": f"unknown event type {kind!r}", "param": "type"})
            return
        if self.is_running(self.KEY):
            await self._send_error(
                {"message": "a response is already in progress on this socket",
                 "code": "response_in_progress"}
            )  # fmt: skip
            return
        refusal = self.refusal()
        if refusal is not None:
            await self._send_error(refusal)
            return
        body = {k: v for k, v in message.items() if k not in ("type", "stream_id")}
        body["stream"] = True
        stream_id = message.get("stream_id")
        if stream_id is not None and not isinstance(stream_id, str):
            await self._send_error({"message": "stream_id must be a string", "param": "stream_id"})
            return
        # Echoed in every event of this response (the WebSocket mode's envelope).
        tag = b"" if stream_id is None else b',"stream_id":' + orjson.dumps(stream_id) + b"}"

        async def job(running: Running) -> bytes | None:
            return await self._run(body, tag, running)

        self.spawn(self.KEY, job)

    async def _run(self, body: dict[str, Any], tag: bytes, running: Running) -> bytes | None:
        source: ResponsesRecords | None = None
        try:
            with running.scope:
                try:
                    parsed = await self._state.engine.input_processor.run(
                        functools.partial(parse_responses_request, body)
                    )
                    parsed.resumable = False  # the socket follows its own generation
                    source, _ = await start_response(self._state, parsed, self._owner, self._last)
                    async for record in source:
                        if record.kind is RecordKind.EVENT:
                            payload = record.payload[:-1] + tag if tag else record.payload
                            await self.send_bytes(payload)
                    turn = [*source.history, {"role": "assistant", "content": _text(source)}]
                    self._last = StoredResponse(source.response, turn, self._owner, 0.0)
                except Exception as exc:
                    await self._send_error(api_error_from(exc).to_object())
        finally:
            if source is not None:
                await source.aclose()  # aborts an unfinished generation (socket gone, error)
        return None

    async def _send_error(self, error: dict[str, Any]) -> None:
        event = {
            "type": "error",
            "code": error.get("code"),
            "message": error.get("message", "error"),
            "param": error.get("param"),
            "sequence_number": 0,
        }
        await self.send_bytes(orjson.dumps(event))


def _text(source: ResponsesRecords) -> str:
    output = source.response.get("output") or [{}]
    return "".join(p.get("text", "") for p in output[0].get("content", []))
