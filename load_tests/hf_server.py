"""A minimal OpenAI-compatible streaming server on transformers' `generate()`: the baseline.

    python -m triode.load_tests.hf_server [--model DIR] [--port 8001] [--max-batch-size 32]

Routes: GET /health, GET /v1/models, POST /v1/completions and /v1/chat/completions (streaming
SSE in OpenAI's format with `stream_options.include_usage`, or one JSON body). Honours
`max_tokens`, `temperature` and `ignore_eos`; other sampling options are ignored. Requests run
in static batches (see hf_batcher.py); `--max-batch-size 1` serves one request at a time.
quart-trio on hypercorn, like triode's own server, so the HTTP layers cost the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import hypercorn.trio
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from quart import Response, request
from quart_trio import QuartTrio

from triode.load_tests.hf_batcher import HFBatcher, open_request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# OpenAI's SSE framing, written out here: load_tests talks to servers only over sockets, and
# this baseline shares no code with the server it is compared against.
DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


def encode_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error(status: int, message: str) -> Response:
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": status,
        }
    }
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_app(batcher: HFBatcher, model_name: str) -> QuartTrio:
    app = QuartTrio(__name__)
    tokenizer = batcher.tokenizer

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', content_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "transformers"}
        return Response(
            orjson.dumps({"object": "list", "data": [card]}), content_type="application/json"
        )

    async def generate(is_chat: bool) -> Response:
        try:
            body = orjson.loads(await request.get_data(as_text=False))
            if is_chat:
                text = tokenizer.apply_chat_template(
                    body["messages"], add_generation_prompt=True, tokenize=False
                )
                prompt_ids = tokenizer.encode(text, add_special_tokens=False)
            else:
                prompt_ids = tokenizer.encode(body["prompt"])
            max_tokens = int(body.get("max_tokens") or 16)
            temperature = float(body.get("temperature", 1.0) or 0.0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _error(400, f"bad request: {exc!r}")
        if max_tokens < 1:
            return _error(400, "max_tokens must be at least 1")
        req, events = open_request(
            prompt_ids, max_tokens, temperature, bool(body.get("ignore_eos"))
        )
        try:
            batcher.submit_nowait(req)
        except trio.WouldBlock:
            return _error(503, "too many requests waiting")
        chunks = _Chunks(is_chat, model_name)
        usage = {"prompt_tokens": len(prompt_ids)}
        if not body.get("stream"):
            with events:
                parts = [value async for kind, value in events if kind == "text"]
            usage["completion_tokens"] = len(req.output_ids)
            return Response(
                orjson.dumps(chunks.whole("".join(parts), usage)), content_type="application/json"
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def sse() -> AsyncIterator[bytes]:
            try:
                with events:
                    async for kind, value in events:
                        if kind == "text":
                            yield encode_event(chunks.chunk(text=value))
                        elif kind == "end":
                            yield encode_event(chunks.chunk(finish_reason=value))
                        else:
                            yield encode_event(
                                {"error": {"message": value, "type": "server_error"}}
                            )
                if include_usage:
                    usage["completion_tokens"] = len(req.output_ids)
                    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                    yield encode_event(chunks.usage(usage))
                yield DONE
            finally:
                req.is_done = True  # a client that left frees nothing, but stops the row's output

        response = Response(sse(), mimetype=MEDIA_TYPE)
        response.timeout = None
        return response

    @app.post("/v1/completions")
    async def completions() -> Response:
        return await generate(is_chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        return await generate(is_chat=True)

    return app


class _Chunks:
    """OpenAI chunk objects for one response."""

    def __init__(self, is_chat: bool, model: str) -> None:
        self.is_chat = is_chat
        self.base = {
            "id": ("chatcmpl-" if is_chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion.chunk" if is_chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._is_first = True

    def chunk(self, text: str = "", finish_reason: str | None = None) -> dict[str, Any]:
        if self.is_chat:
            delta: dict[str, Any] = {"content": text} if text else {}
            if self._is_first:
                delta["role"] = "assistant"
                self._is_first = False
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason}
        return {**self.base, "choices": [choice]}

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage}

    def whole(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.is_chat:
            message = {"role": "assistant", "content": text}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "length"}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
            kind = "text_completion"
        return {**self.base, "object": kind, "choices": [choice], "usage": usage}


def load_batcher(
    model_dir: str | None, max_batch_size: int, num_threads: int | None
) -> tuple[HFBatcher, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        from triode.engine.models.loader import resolve_model

        model_dir = str(resolve_model(None).folder)
    if num_threads:
        torch.set_num_threads(num_threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return HFBatcher(model, tokenizer, max_batch_size), os.path.basename(model_dir.rstrip("/"))


async def serve(args: argparse.Namespace) -> None:
    batcher, name = await trio.to_thread.run_sync(
        load_batcher, args.model, args.max_batch_size, args.num_threads
    )
    app = create_app(batcher, args.served_model_name or name)
    config = HypercornConfig()
    config.bind = [f"{args.host}:{args.port}"]
    config.keep_alive_timeout = 5.0
    config.backlog = 2048
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        await hypercorn.trio.serve(app, config, shutdown_trigger=_wait_for_signal)
        nursery.cancel_scope.cancel()


async def _wait_for_signal() -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=None, help="a transformers folder (default: the bundled SmolLM2)"
    )
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-batch-size", type=int, default=32, help="1: one request at a time")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads")
    trio.run(serve, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
