"""200 concurrent streaming clients on one server, half SSE and half WebSocket: all complete."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.helpers import CHAT, stream_sse, wait_for_metric

pytestmark = pytest.mark.timeout(300)

NUM_EACH = 100
MAX_TOKENS = 8


def request_body(i: int) -> tuple[str, dict]:
    """Alternate chat and completions, all forced to MAX_TOKENS tokens."""
    common = {"max_tokens": MAX_TOKENS, "ignore_eos": True, "seed": i}
    if i % 2:
        return "chat.completion", {**common, "messages": CHAT}
    return "completion", {**common, "prompt": f"Client {i} says"}


async def test_200_concurrent_streaming_clients(tiny_server):
    done = {"sse": 0, "ws": 0}
    limits = httpx.Limits(max_connections=NUM_EACH, max_keepalive_connections=NUM_EACH)

    async with httpx.AsyncClient(base_url=tiny_server.url, limits=limits, timeout=120) as client:

        async def sse_client(i: int) -> None:
            kind, body = request_body(i)
            path = "/v1/chat/completions" if kind == "chat.completion" else "/v1/completions"
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            result = await stream_sse(client, path, body)
            assert result.status == 200 and result.is_done, result.events[:2]
            assert not any("error" in chunk for chunk in result.chunks)
            assert result.chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS
            done["sse"] += 1

        async def ws_client(i: int) -> None:
            kind, body = request_body(i)
            async with open_websocket_url(tiny_server.ws_url) as ws:
                await ws.send_message(
                    orjson.dumps({"type": kind, "id": i, "request": body}).decode()
                )
                num_chunks = 0
                while (message := orjson.loads(await ws.get_message()))["type"] == "chunk":
                    num_chunks += 1
                assert message["type"] == "done", message
                assert message["id"] == i and message["usage"]["completion_tokens"] == MAX_TOKENS
                assert num_chunks > 0
            done["ws"] += 1

        start = time.monotonic()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for i in range(NUM_EACH):
                    nursery.start_soon(sse_client, i)
                    nursery.start_soon(ws_client, i)
        elapsed = time.monotonic() - start
        print(f"{2 * NUM_EACH} clients done in {elapsed:.2f} s")
        assert done == {"sse": NUM_EACH, "ws": NUM_EACH}
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        await wait_for_metric(client, "", "kv_cache_usage_perc", lambda v: v == 0)
