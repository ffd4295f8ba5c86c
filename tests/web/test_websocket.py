"""/v1/ws against a real tiny-model server: interleaving, cancel, errors, same chunks as SSE."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.web.helpers import CHAT, metric, read_metrics, stream_sse, wait_for_metric

pytestmark = pytest.mark.timeout(120)


async def send(ws: WebSocketConnection, message: Any) -> None:
    await ws.send_message(message if isinstance(message, str) else orjson.dumps(message).decode())


async def receive(ws: WebSocketConnection) -> dict:
    with trio.fail_after(30):
        return orjson.loads(await ws.get_message())


async def collect_until_final(ws: WebSocketConnection, gen_ids: set) -> list[dict]:
    """Every message until each id in `gen_ids` got its done or error."""
    messages, open_ids = [], set(gen_ids)
    while open_ids:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("done", "error"):
            open_ids.discard(message["id"])
    return messages


@pytest.fixture
async def ws(tiny_server):
    async with open_websocket_url(tiny_server.ws_url) as ws:
        yield ws


async def test_two_generations_interleave_and_cancel_ends_only_one(ws, tiny_server):
    long = {"prompt": "Once", "max_tokens": 400, "ignore_eos": True}
    await send(ws, {"type": "completion", "id": "a", "request": long})
    await send(ws, {"type": "completion", "id": 2, "request": {**long, "max_tokens": 300}})
    order: list[Any] = []
    while order.count("a") < 20 or order.count(2) < 20:
        message = await receive(ws)
        assert message["type"] == "chunk"
        order.append(message["id"])
    # Interleaved: each generation's chunks appear after the other's first chunk.
    first_a, first_b = order.index("a"), order.index(2)
    assert any(i == 2 for i in order[first_a + 1 :]) and any(i == "a" for i in order[first_b + 1 :])

    async with httpx.AsyncClient(base_url=tiny_server.url) as client:
        aborts = metric(
            await read_metrics(client, ""), "request_success_total", finished_reason="abort"
        )
        await send(ws, {"type": "cancel", "id": "a"})
        messages = await collect_until_final(ws, {"a", 2})
        finals = {m["id"]: m for m in messages if m["type"] in ("done", "error")}
        assert finals["a"]["cancelled"] is True
        assert 0 < finals["a"]["usage"]["completion_tokens"] < 400
        assert "cancelled" not in finals[2] and finals[2]["usage"]["completion_tokens"] == 300
        # Nothing of "a" follows its final message (chunks already in flight come before it).
        assert all(m["id"] != "a" for m in messages[messages.index(finals["a"]) + 1 :])
        text = await read_metrics(client, "")
        assert metric(text, "request_success_total", finished_reason="abort") == aborts + 1
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)


async def test_chunks_are_the_sse_chunk_objects(ws, tiny_server):
    body = {"messages": CHAT, "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    await send(ws, {"type": "chat.completion", "id": "c", "request": body})
    messages = await collect_until_final(ws, {"c"})
    chunks = [m["chunk"] for m in messages if m["type"] == "chunk"]
    assert messages[-1] == {
        "type": "done",
        "id": "c",
        "usage": {
            "prompt_tokens": messages[-1]["usage"]["prompt_tokens"],
            "completion_tokens": 5,
            "total_tokens": messages[-1]["usage"]["prompt_tokens"] + 5,
            "prompt_tokens_details": {
                "cached_tokens": messages[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
            },
        },
    }
    async with httpx.AsyncClient(base_url=tiny_server.url) as client:
        sse = await stream_sse(client, "/v1/chat/completions", {**body, "stream": True})

    def strip(chunk: dict) -> dict:
        return {k: v for k, v in chunk.items() if k not in ("id", "created")}

    def merged(chunks: list[dict]) -> dict:
        """The chunks' text deltas joined into the last chunk (by design, deltas a slow
        reader has not taken yet are merged, so where chunks split is timing, not format)."""
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        last = strip(chunks[-1])
        last["choices"] = [{**last["choices"][0], "delta": {"content": text}}]
        return last

    # The same objects: the role chunk, then text chunks shaped alike, the same text and end.
    assert strip(chunks[0]) == strip(sse.chunks[0])
    assert {tuple(sorted(strip(c))) for c in chunks} == {
        tuple(sorted(strip(c))) for c in sse.chunks
    }
    assert merged(chunks[1:]) == merged(sse.chunks[1:])


async def test_request_errors_carry_the_id_and_the_socket_stays_open(ws):
    await send(
        ws, {"type": "completion", "id": "bad", "request": {"prompt": "x", "temperature": -1}}
    )
    reply = await receive(ws)
    assert reply["type"] == "error" and reply["id"] == "bad"
    assert (
        reply["error"]["param"] == "temperature"
        and reply["error"]["type"] == "invalid_request_error"
    )

    await send(
        ws, {"type": "chat.completion", "id": "m", "request": {"model": "nope", "messages": CHAT}}
    )
    reply = await receive(ws)
    assert reply["id"] == "m" and reply["error"]["code"] == "model_not_found"

    too_long = {"prompt": [5] * 1000, "max_tokens": 100}
    await send(ws, {"type": "completion", "id": "long", "request": too_long})
    reply = await receive(ws)
    assert (
        reply["error"]["code"] == "context_length_exceeded" and "1024" in reply["error"]["message"]
    )

    await send(ws, "this is not json")
    reply = await receive(ws)
    assert reply["type"] == "error" and reply["id"] is None

    await send(ws, {"type": "completion", "id": "ok", "request": {"prompt": "x", "max_tokens": 2}})
    messages = await collect_until_final(ws, {"ok"})
    assert messages[-1]["type"] == "done"


async def test_duplicate_id_while_running(ws):
    long = {"prompt": "x", "max_tokens": 300, "ignore_eos": True}
    await send(ws, {"type": "completion", "id": "d", "request": long})
    assert (await receive(ws))["type"] == "chunk"
    await send(ws, {"type": "completion", "id": "d", "request": long})
    messages = await collect_until_final(ws, {"d"})
    errors = [m for m in messages if m["type"] == "error"]
    assert (
        len(errors) == 1
        and errors[0]["id"] is None
        and errors[0]["error"]["code"] == "duplicate_id"
    )
    assert messages[-1]["type"] == "done" and messages[-1]["usage"]["completion_tokens"] == 300
