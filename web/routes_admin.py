"""Operational routes: /health, /metrics, and vLLM's /tokenize and /detokenize."""

from __future__ import annotations

from quart import Quart, Response, request

from triode.web.errors import bad_request, json_response, service_unavailable
from triode.web.prepare import chat_prompt_ids, serving_engine
from triode.web.protocol import DetokenizeRequest, TokenizeRequest, parse_body
from triode.web.state import AppState

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def register_admin_routes(app: Quart, state: AppState) -> None:
    @app.get("/health")
    async def health() -> Response:
        """200 while the engine serves; 503 while loading, draining, or after it died."""
        engine = state.engine
        if state.engine_error is not None:
            error = service_unavailable(f"the engine failed: {state.engine_error}", "engine_dead")
        elif engine.dead_reason is not None:
            error = service_unavailable(f"the engine failed: {engine.dead_reason}", "engine_dead")
        elif state.is_draining:
            error = service_unavailable("the server is shutting down", "server_shutting_down")
        elif not engine.is_ready:
            error = service_unavailable("the engine is still loading", "engine_not_ready", 1)
        else:
            return json_response({"status": "ok"})
        return error.to_response()

    @app.get("/metrics")
    async def metrics() -> Response:
        metrics = state.engine.metrics
        body = metrics.render() if metrics is not None else b""  # empty while loading
        return Response(body, content_type=PROMETHEUS_CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize() -> Response:
        body = parse_body(TokenizeRequest, await request.get_data(as_text=False))
        core = serving_engine(state.engine, body.model)
        tokenizer = core.tokenizer
        if body.messages is not None:
            ids = chat_prompt_ids(tokenizer, body.messages, body.add_generation_prompt)
        else:
            ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        result: dict[str, object] = {
            "count": len(ids),
            "max_model_len": core.max_model_len,
            "tokens": ids,
        }
        if body.return_token_strs:
            result["token_strs"] = tokenizer.convert_ids_to_tokens(ids)
        return json_response(result)

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = parse_body(DetokenizeRequest, await request.get_data(as_text=False))
        core = serving_engine(state.engine, body.model)
        vocab_size = len(core.tokenizer)
        if any(t >= vocab_size for t in body.tokens):
            raise bad_request(f"tokens must be in [0, {vocab_size})", "tokens")
        return json_response({"prompt": core.tokenizer.decode(body.tokens)})
