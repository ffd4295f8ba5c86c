"""The OpenAI routes: /v1/completions, /v1/chat/completions (SSE or one JSON body), /v1/models.

Everything that can fail for the client's fault happens before the response starts, so it gets
a real status code; once an SSE stream has begun, a failure is sent as a `data:` chunk holding
an `error` object, followed by `data: [DONE]`. A resumable stream (web/resumable.py) also
numbers its events (`id:` lines) and outlives its connection for its window.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

from triode.engine import ModelInfo
from triode.streaming.sse import DONE, MEDIA_TYPE
from triode.web.access import bearer_token
from triode.web.errors import json_response
from triode.web.generation import Generation
from triode.web.openai_records import OpenAIRecords
from triode.web.prepare import CHAT, COMPLETION, PreparedRequest, model_not_found
from triode.web.resumable import OPENAI, SSE_HEADERS, owner_of, resume_window, sse_body
from triode.web.state import AppState


def register_openai_routes(app: Quart, state: AppState) -> None:
    def window_of(prepared: PreparedRequest) -> float | None:
        if not prepared.is_stream:
            return None
        return resume_window(state.config, prepared.resumable, prepared.resume_window_s)

    async def generate(kind: str) -> Response:
        state.engine.check_serving()  # refuse before reading a body we would not use
        body = await request.get_data(as_text=False)
        generation = await Generation.create(
            state.engine,
            kind,
            body,
            check=window_of,
            tool_call_parser=state.config.tool_call_parser,
        )
        window = window_of(generation.prepared)
        source = OpenAIRecords(generation)
        if window is not None:
            # The stream's own task owns the generation now; this connection only reads.
            owner = owner_of(state.config.api_key, [bearer_token(request.headers)])
            try:
                reader = state.streams.start(
                    generation.prepared.response_id, OPENAI, source, owner=owner, window_s=window
                )
            except BaseException:
                await generation.aclose()
                raise
            request.cleanups.append(reader.aclose)  # type: ignore[attr-defined]
            return sse_response(sse_body(reader, DONE, reader.aclose))
        # Whatever happens from here on (the client leaving before or during the body, an
        # error), the connection runs this when it ends: the request never outlives it.
        request.cleanups.append(generation.aclose)  # type: ignore[attr-defined]
        if not generation.prepared.is_stream:
            return json_response(await generation.collect())
        return sse_response(sse_body(source, DONE, source.aclose))

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


def sse_response(body: Any, headers: dict[str, str] = SSE_HEADERS) -> Response:
    response = Response(body, mimetype=MEDIA_TYPE, headers=headers)
    response.timeout = None  # a long generation must not be cut by RESPONSE_TIMEOUT
    return response
