"""Clients that leave or stop reading: their requests end at once, and nobody else notices.

Measured on a real server. Each abort is seen where it happens: the engine logs every aborted
request with its output-token count (logger `triode.engine.llm_engine`, DEBUG), so a test knows
that *its* request was aborted, rather than finished by itself, and how many tokens the engine
generated after the client left (/metrics' token counter, read just before leaving). The server
here keeps its engine core in the server's process (not a child, as `triode serve` does) so
that those records reach this test's log capture.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.conftest import running_server, tiny_engine_config
from tests.web.helpers import (
    metric,
    open_raw_request,
    read_metrics,
    read_until,
    stream_sse,
    wait_for_metric,
)
from triode.streaming.sse import SSEDecoder
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(180)

LONG = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True}
# The README promises an abort within a step or two (1-2 tokens on the tiny model). Reading
# /metrics before leaving takes a few steps' time itself, so a few more tokens are allowed; a
# request that is not aborted generates up to 1000.
MAX_TOKENS_AFTER_LEAVING = 10
ENGINE_LOGGER = "triode.engine.llm_engine"


@pytest.fixture(scope="module")
def tiny_server(tiny_folder):
    """Like the shared tiny server, with the engine core in this process (see above)."""
    server_config = ServerConfig(port=0, max_ws_connections=256, shutdown_timeout_s=5.0)
    yield from running_server(tiny_engine_config(tiny_folder), server_config)


@pytest.fixture
async def client(tiny_server, caplog):
    caplog.set_level(logging.DEBUG, logger=ENGINE_LOGGER)
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=60) as client:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        yield client


async def _wait_running(client: httpx.AsyncClient, num_requests: int = 1) -> None:
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == num_requests)
    await wait_for_metric(client, "", "kv_cache_usage_perc", lambda v: v > 0)


def _aborts(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    """Output tokens at abort, per request id, from the engine's abort records."""
    return {
        record.args[0]: record.args[2]
        for record in caplog.records
        if record.name == ENGINE_LOGGER and record.msg.startswith("aborted request")
    }


async def _leave_and_measure(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    leave: Callable[[], Awaitable[object]],
    tokens_before: float,
    num_requests: int = 1,
) -> dict[str, dict[str, float]]:
    """Call `leave()` (the client going away) and wait until the engine let go. Per aborted
    request id: tokens generated after leaving and ms until every block was back."""
    before = await read_metrics(client, "")
    num_abort_reasons = metric(before, "request_success_total", finished_reason="abort")
    # Every request of this test is running, so the counter is theirs.
    tokens_at_leave = metric(before, "generation_tokens_total") - tokens_before
    caplog.clear()
    start = time.monotonic()
    await leave()
    try:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    except trio.TooSlowError:
        pytest.fail("the requests still run 10 s after their client left: not aborted")
    released_ms = (time.monotonic() - start) * 1000
    after = await read_metrics(client, "")
    assert metric(after, "kv_cache_usage_perc") == 0.0  # every block back in the pool
    aborts = _aborts(caplog)
    assert len(aborts) == num_requests, aborts  # each request aborted, nothing else
    assert (
        metric(after, "request_success_total", finished_reason="abort")
        == num_abort_reasons + num_requests
    )
    tokens_at_abort = sum(aborts.values())
    assert tokens_at_abort == metric(after, "generation_tokens_total") - tokens_before
    result = {
        rid: {"tokens_at_abort": n, "released_after_ms": released_ms} for rid, n in aborts.items()
    }
    result["all"] = {"tokens_after_leave": tokens_at_abort - tokens_at_leave}
    print(f"{result}")
    return result


async def test_sse_disconnect_mid_stream_aborts_and_frees_blocks(client, tiny_server, caplog):
    tokens_before = metric(await read_metrics(client, ""), "generation_tokens_total")
    stream = await open_raw_request(tiny_server.url, "/v1/completions", {**LONG, "stream": True})
    with trio.fail_after(30):
        head = await read_until(stream, b"data: ")  # headers and the first event
        head += await read_until(stream, b"\n\n")
    assert b"200" in head.split(b"\r\n")[0]
    request_id = orjson.loads(head.split(b"data: ", 1)[1].split(b"\n\n")[0])["id"]
    await _wait_running(client)
    result = await _leave_and_measure(client, caplog, stream.aclose, tokens_before)
    assert request_id in result  # this request, by its id, was the one aborted
    assert 0 <= result["all"]["tokens_after_leave"] <= MAX_TOKENS_AFTER_LEAVING


async def test_non_stream_disconnect_aborts(client, tiny_server, caplog):
    tokens_before = metric(await read_metrics(client, ""), "generation_tokens_total")
    stream = await open_raw_request(tiny_server.url, "/v1/completions", LONG)
    await _wait_running(client)
    result = await _leave_and_measure(client, caplog, stream.aclose, tokens_before)
    (request_id,) = (rid for rid in result if rid != "all")
    assert request_id.startswith("cmpl-")
    assert 0 <= result["all"]["tokens_after_leave"] <= MAX_TOKENS_AFTER_LEAVING


async def test_websocket_close_aborts_all_its_generations(client, tiny_server, caplog):
    tokens_before = metric(await read_metrics(client, ""), "generation_tokens_total")
    ws_cm = open_websocket_url(tiny_server.ws_url)
    ws = await ws_cm.__aenter__()
    gen_ids = ("a", "b", "c")
    for gen_id in gen_ids:
        await ws.send_message(
            orjson.dumps({"type": "completion", "id": gen_id, "request": LONG}).decode()
        )
    request_ids: dict[str, str] = {}  # generation id -> the engine's request id
    while len(request_ids) < len(gen_ids):
        message = orjson.loads(await ws.get_message())
        assert message["type"] == "chunk"
        request_ids.setdefault(message["id"], message["chunk"]["id"])
    await _wait_running(client, len(gen_ids))
    result = await _leave_and_measure(
        client, caplog, lambda: ws_cm.__aexit__(None, None, None), tokens_before, len(gen_ids)
    )
    assert set(request_ids.values()) == set(result) - {"all"}  # every generation aborted
    # Three requests decode together: a step or two after leaving is a few tokens each.
    assert result["all"]["tokens_after_leave"] <= len(gen_ids) * MAX_TOKENS_AFTER_LEAVING


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
