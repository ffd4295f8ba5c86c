"""Operational routes: /health, /version, /metrics, and vLLM's /tokenize and /detokenize."""

from __future__ import annotations

from prometheus_client import generate_latest
from quart import Quart, Response, request

from triode import __version__
from triode.engine import EngineNotReadyError, Preprocessor
from triode.web.errors import api_error_from, bad_request, json_response
from triode.web.prepare import chat_messages, check_model
from triode.web.protocol import DetokenizeRequest, TokenizeRequest, parse_body
from triode.web.state import AppState
from triode.web.stream_metrics import stream_metrics_renderer

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def register_admin_routes(app: Quart, state: AppState) -> None:
    stream_registry = stream_metrics_renderer(state.streams)

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine serves; 503 while loading, draining, after shutdown or after
        it died (the body says which)."""
        try:
            state.engine.check_serving()
        except EngineNotReadyError as exc:
            return api_error_from(exc).to_response()
        return json_response({"status": "ok"})

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        metrics = state.engine.metrics
        body = metrics.render() if metrics is not None else b""  # empty while loading
        body += generate_latest(stream_registry)
        return Response(body, content_type=PROMETHEUS_CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize() -> Response:
        data = await request.get_data(as_text=False)

        def work(worker: Preprocessor) -> dict[str, object]:
            body = parse_body(TokenizeRequest, data)
            check_model(worker.info.name, body.model)
            if body.messages is not None:
                messages = chat_messages(body.messages)
                continued = {"continue_final_message": True} if body.continue_final_message else {}
                ids = worker.encode_chat(messages, body.add_generation_prompt, **continued)
            else:
                assert body.prompt is not None  # the schema wants exactly one of them
                ids = worker.encode(body.prompt, body.add_special_tokens)
            result: dict[str, object] = {
                "count": len(ids),
                "max_model_len": worker.info.max_model_len,
                "tokens": ids,
            }
            if body.return_token_strs:
                result["token_strs"] = worker.token_strings(ids)
            return result

        return json_response(await state.engine.input_processor.run(work))

    @app.post("/detokenize")
    async def detokenize() -> Response:
        data = await request.get_data(as_text=False)

        def work(worker: Preprocessor) -> dict[str, object]:
            body = parse_body(DetokenizeRequest, data)
            check_model(worker.info.name, body.model)
            limit = worker.num_tokenizer_tokens
            if body.tokens and max(body.tokens) >= limit:
                raise bad_request(f"tokens must be in [0, {limit})", "tokens")
            return {"prompt": worker.decode(body.tokens)}

        return json_response(await state.engine.input_processor.run(work))
