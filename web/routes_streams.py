"""/v1/streams/{id}: resume a resumable stream over SSE, or stop it.

    GET /v1/streams/{id}            (header Last-Event-ID: N, or ?after=N; neither: from the start)
        the records after N, then live ones, in the stream's own format (OpenAI chunks and
        [DONE], the AI SDK's UI message stream, or Responses events), each with its `id:`;
        resuming after the last record of a finished stream sends only what ends it.
    DELETE /v1/streams/{id}
        stops the generation for every reader (they get the protocol's stopped/error event);
        a finished stream is dropped.

404 for an unknown stream, one that belongs to another API key, or one that ended more than its
window ago; 400 for a sequence number the stream does not have.
"""

from __future__ import annotations

from quart import Quart, Response, request

from triode.web.access import bearer_token
from triode.web.errors import json_response
from triode.web.resumable import (
    SSE_STYLES,
    find_stream,
    open_reader,
    owner_of,
    parse_after,
    sse_body,
)
from triode.web.routes_openai import sse_response
from triode.web.state import AppState


def register_stream_routes(app: Quart, state: AppState) -> None:
    def owner() -> str | None:
        return owner_of(state.config.api_key, [bearer_token(request.headers)])

    @app.get("/v1/streams/<stream_id>")
    async def resume_stream(stream_id: str) -> Response:
        stream = find_stream(state.streams, stream_id, owner())
        after = parse_after(request.headers.get("Last-Event-ID"), request.args.get("after"))
        reader = open_reader(state.streams, stream, after)
        request.cleanups.append(reader.aclose)  # type: ignore[attr-defined]
        style = SSE_STYLES[stream.protocol]
        return sse_response(sse_body(reader, style.done, reader.aclose), style.headers)

    @app.delete("/v1/streams/<stream_id>")
    async def cancel_stream(stream_id: str) -> Response:
        stream = find_stream(state.streams, stream_id, owner())
        was_running = not stream.is_finished
        state.streams.cancel(stream)
        return json_response({"id": stream_id, "object": "stream", "cancelled": was_running})
