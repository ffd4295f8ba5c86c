"""The OpenAI routes: /v1/completions, /v1/chat/completions (SSE or one JSON body), /v1/models.

Everything that can fail for the client's fault happens before the response starts, so it gets
a real status code; once an SSE stream has begun, a failure is sent as a `data:` chunk holding
an `error` object, followed by `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Quart, Response, request

from triode.streaming.sse import DONE, MEDIA_TYPE, encode_event
from triode.web.errors import api_error_from, json_response
from triode.web.formatting import TokenTexts
from triode.web.generation import Generation
from triode.web.prepare import CHAT, COMPLETION, parse_request, prepare, service_draining
from triode.web.state import AppState

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
}


def register_openai_routes(app: Quart, state: AppState, token_texts: TokenTexts) -> None:
    async def generate(kind: str) -> Response:
        if state.is_draining:
            raise service_draining()
        body = await request.get_data(as_text=False)
        parsed = parse_request(kind, body)
        prepared = prepare(state.engine, parsed)
        generation = await Generation.start(state.engine, prepared, token_texts)
        # Whatever happens from here on (the client leaving before or during the body, an
        # error), the connection runs this when it ends: the request never outlives it.
        request.cleanups.append(generation.aclose)  # type: ignore[attr-defined]
        if not parsed.stream:
            return json_response(await generation.collect())
        response = Response(
            sse_events(generation, prepared.include_usage), mimetype=MEDIA_TYPE, headers=SSE_HEADERS
        )
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
        core = state.engine.engine  # raises EngineNotReadyError (503) while loading
        card = {
            "id": core.model_name,
            "object": "model",
            "created": state.started_at,
            "owned_by": "triode",
            "root": str(core.model_folder),
            "max_model_len": core.max_model_len,
        }
        return json_response({"object": "list", "data": [card]})


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
