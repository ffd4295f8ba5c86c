"""The OpenAI routes: /v1/completions, /v1/chat/completions (SSE or one JSON body), /v1/models.

Everything that can fail for the client's fault happens before the response starts, so it gets
a real status code; once an SSE stream has begun, a failure is sent as a `data:` chunk holding
an `error` object, followed by `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response, request

from triode.engine import ModelInfo
from triode.streaming.sse import DONE, MEDIA_TYPE, encode_event
from triode.web.errors import api_error_from, json_response
from triode.web.generation import Generation
from triode.web.prepare import CHAT, COMPLETION, model_not_found
from triode.web.state import AppState

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
}


def register_openai_routes(app: Quart, state: AppState) -> None:
    async def generate(kind: str) -> Response:
        state.engine.check_serving()  # refuse before reading a body we would not use
        body = await request.get_data(as_text=False)
        generation = await Generation.create(
            state.engine, kind, body, tool_call_parser=state.config.tool_call_parser
        )
        # Whatever happens from here on (the client leaving before or during the body, an
        # error), the connection runs this when it ends: the request never outlives it.
        request.cleanups.append(generation.aclose)  # type: ignore[attr-defined]
        if not generation.prepared.is_stream:
            return json_response(await generation.collect())
        events = sse_events(generation, generation.prepared.include_usage)
        response = Response(events, mimetype=MEDIA_TYPE, headers=SSE_HEADERS)
        response.timeout = None  # a long generation must not be cut by RESPONSE_TIMEOUT
        return response

    @app.post("/v1/completions")
    async def completions() -> Response:
        return await generate(COMPLETION)

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        return await generate(CHAT)

    @app.get("/v1/models")
    async def models() -> Response:
        card = model_card(state.engine.model_info, state.started_at)  # 503 while loading
        return json_response({"object": "list", "data": [card]})

    @app.get("/v1/models/<path:model_id>")
    async def model(model_id: str) -> Response:
        info = state.engine.model_info
        if model_id != info.name:
            raise model_not_found(model_id, info.name)
        return json_response(model_card(info, state.started_at))


def model_card(info: ModelInfo, created: int) -> dict[str, Any]:
    return {
        "id": info.name,
        "object": "model",
        "created": created,
        "owned_by": "triode",
        "root": info.folder,
        "max_model_len": info.max_model_len,
        "weights": info.weights,  # triode's: quantization, dtype, bytes, formats
    }


async def sse_events(generation: Generation, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body: one event per chunk, the usage chunk if asked for, then [DONE]."""
    try:
        try:
            async for chunk in generation:
                yield encode_event(chunk)
            if include_usage:
                yield encode_event(generation.usage_chunk())
        except Exception as exc:  # after the headers went out, errors travel in the stream
            yield encode_event({"error": api_error_from(exc).to_object()})
        yield DONE
    finally:
        await generation.aclose()
