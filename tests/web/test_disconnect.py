"""Clients that leave or stop reading: their requests end at once, and nobody else notices.

Measured through /metrics on a real server: running requests, KV-cache usage, aborts, and the
tokens generated after the client left (one per step for a single request).
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.helpers import (
    metric,
    open_raw_request,
    read_metrics,
    read_until,
    stream_sse,
    wait_for_metric,
)
from triode.streaming.sse import SSEDecoder

pytestmark = pytest.mark.timeout(180)

LONG = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True}


@pytest.fixture
async def client(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=60) as client:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        yield client


async def _wait_running(client: httpx.AsyncClient) -> None:
    await wait_for_metric(client, "", "num_requests_running", lambda v: v >= 1)
    await wait_for_metric(client, "", "kv_cache_usage_perc", lambda v: v > 0)


async def _measure_release(client: httpx.AsyncClient, leave) -> dict[str, float]:
    """Call `leave()` (the client going away) and time how long until the engine let go."""
    before = await read_metrics(client, "")
    aborts = metric(before, "request_success_total", finished_reason="abort")
    tokens_at_leave = metric(before, "generation_tokens_total")
    start = time.monotonic()
    await leave()
    _, waited = await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    after = await read_metrics(client, "")
    assert metric(after, "kv_cache_usage_perc") == 0.0  # every block back in the pool
    assert metric(after, "request_success_total", finished_reason="abort") >= aborts + 1
    return {
        "released_after_ms": (time.monotonic() - start) * 1000,
        "poll_ms": waited * 1000,
        "tokens_after_leave": metric(after, "generation_tokens_total") - tokens_at_leave,
    }


async def test_sse_disconnect_mid_stream_aborts_and_frees_blocks(client, tiny_server):
    stream = await open_raw_request(tiny_server.url, "/v1/completions", {**LONG, "stream": True})
    with trio.fail_after(30):
        head = await read_until(stream, b"data: ")  # headers and the first event
    assert b"200" in head.split(b"\r\n")[0]
    await _wait_running(client)
    result = await _measure_release(client, stream.aclose)
    print(f"SSE disconnect: {result}")
    # A whole generation is 1000 tokens; the engine stops within a few steps of the close.
    assert result["tokens_after_leave"] < 100


async def test_non_stream_disconnect_aborts(client, tiny_server):
    stream = await open_raw_request(tiny_server.url, "/v1/completions", LONG)
    await _wait_running(client)
    result = await _measure_release(client, stream.aclose)
    print(f"non-stream disconnect: {result}")
    assert result["tokens_after_leave"] < 100


async def test_websocket_close_aborts_all_its_generations(client, tiny_server):
    ws_cm = open_websocket_url(tiny_server.ws_url)
    ws = await ws_cm.__aenter__()
    for gen_id in ("a", "b"):
        await ws.send_message(
            orjson.dumps({"type": "completion", "id": gen_id, "request": LONG}).decode()
        )
    seen: set[str] = set()
    while seen != {"a", "b"}:
        seen.add(orjson.loads(await ws.get_message())["id"])
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 2)
    result = await _measure_release(client, lambda: ws_cm.__aexit__(None, None, None))
    print(f"WebSocket close: {result}")
    text = await read_metrics(client, "")
    assert metric(text, "num_requests_running") == 0


async def test_a_client_that_stops_reading_does_not_slow_others(client, tiny_server, nursery):
    heavy = {**LONG, "logprobs": 5, "max_tokens": 300, "stream": True}  # ~400-byte chunks
    other_body = {"prompt": "Hi", "max_tokens": 100, "ignore_eos": True, "stream": True}

    async def time_other() -> float:
        start = time.monotonic()
        other = await stream_sse(client, "/v1/completions", other_body)
        assert other.is_done and other.text()
        return time.monotonic() - start

    # Baseline: the same heavy request beside it, read by a client that keeps up.
    done = trio.Event()

    async def read_heavy() -> None:
        assert (await stream_sse(client, "/v1/completions", heavy)).is_done
        done.set()

    nursery.start_soon(read_heavy)
    await _wait_running(client)
    baseline_s = await time_other()
    await done.wait()

    # Now a client that never reads, with a tiny receive window: the server's writes to it
    # block after a few chunks.
    stalled = await open_raw_request(tiny_server.url, "/v1/completions", heavy, receive_buffer=4096)
    await _wait_running(client)
    stalled_s = await time_other()
    print(
        f"other client: {stalled_s:.2f} s beside a stalled reader, {baseline_s:.2f} s beside a reading one"
    )
    assert stalled_s < 2 * baseline_s + 0.5
    # The stalled client's request finishes in the engine while it reads nothing.
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0, timeout_s=60)

    # Reading now, it gets everything: the pending deltas were merged, not dropped.
    with trio.fail_after(60):
        body = await read_until(stalled, b"data: [DONE]", limit=1 << 26)
    events = SSEDecoder().feed(_unchunk(body.split(b"\r\n\r\n", 1)[1]))
    chunks = [orjson.loads(e) for e in events[:-1]]
    num_tokens = sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks)
    assert num_tokens == 300
    print(f"stalled client: {len(chunks)} events carried {num_tokens} tokens")
    assert len(chunks) < num_tokens  # coalesced while the socket was full
    await stalled.aclose()


def _unchunk(body: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding (the raw sockets see it)."""
    out, pos = b"", 0
    while pos < len(body):
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            break
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return out
