"""Read deadlines at the edge (slow heads and bodies), the Host check (DNS rebinding) and CORS
headers on refusals, on one tiny-model server with short timeouts."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.conftest import running_server, tiny_engine_config
from tests.web.helpers import metric, read_metrics, wait_for_metric
from tests.web.raw_client import (
    RawReply,
    connect,
    exchange,
    read_to_close,
    socket_inodes_of,
    stall_websocket,
    tcp_connections,
)
from triode.web.access import HostPolicy
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 1.5
SEND_TIMEOUT_S = 2.0
APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def server(tiny_folder):
    server_config = ServerConfig(
        port=0,
        header_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
        allowed_hosts=["api.example", ".corp.example"],
        allowed_origins=[APP_ORIGIN],
        send_timeout_s=SEND_TIMEOUT_S,
        shutdown_timeout_s=2.0,
    )
    engine_config = tiny_engine_config(tiny_folder, num_kv_blocks=2048)
    yield from running_server(engine_config, server_config)


async def _dribble(url: str, head: bytes, trickle: bytes, interval_s: float) -> RawReply:
    """Send `head` at once, then `trickle` one byte per `interval_s` until the server closes."""
    stream = await connect(url)
    async with stream:
        await stream.send_all(head)
        start = time.monotonic()
        for byte in trickle:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:  # closed on us: read what it said
                break
            await trio.sleep(interval_s)
            if time.monotonic() - start > TIMEOUT_S + 0.5:
                break  # past the deadline: the server has answered by now
        reply = await read_to_close(stream, timeout_s=5)
        reply.elapsed_s = time.monotonic() - start
        return reply


async def _assert_all_cut(replies: list[RawReply]) -> None:
    for reply in replies:
        assert reply.is_closed, reply
        assert reply.elapsed_s < TIMEOUT_S + 1.5, reply.elapsed_s
        if reply.data:  # 408 when it could still answer; a reset may swallow it
            assert reply.status == 408, reply.data
            assert reply.error()["code"] == "request_timeout"


async def _run_all(jobs: list) -> list[RawReply]:
    replies: list[RawReply] = []

    async def run(job) -> None:
        replies.append(await job())

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    return replies


async def test_a_body_dribbled_at_one_byte_per_second_is_cut_with_408(server):
    """Issue 11's slowloris: 20 connections each sending a declared 200-byte body at 1 byte/s.
    Every byte restarts a per-read timeout; the body deadline still ends them, and the server
    answers everyone else meanwhile."""
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n"
    )
    jobs = [lambda: _dribble(server.url, head, b"{" + b" " * 199, 1.0) for _ in range(20)]
    replies: list[RawReply] = []

    async def dribblers() -> None:
        replies.extend(await _run_all(jobs))

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(dribblers)
        await trio.sleep(0.5)
        body = {"prompt": "Hi", "max_tokens": 2}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
    assert len(replies) == 20
    await _assert_all_cut(replies)
    assert sum(r.status == 408 for r in replies) >= 1


async def test_a_head_dribbled_byte_by_byte_is_cut_with_408(server):
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
    trickle = b"X-Slow: " + b"a" * 100
    replies = await _run_all([lambda: _dribble(server.url, head, trickle, 0.25)] * 5)
    await _assert_all_cut(replies)


async def test_a_slow_body_within_the_deadline_is_served(server):
    body = orjson.dumps({"prompt": "hi"})
    stream = await connect(server.url)
    async with stream:
        await stream.send_all(
            b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for part in (body[:3], body[3:6], body[6:]):
            await trio.sleep(0.3)
            await stream.send_all(part)
        reply = await read_to_close(stream, 5)
    assert reply.status == 200, reply.data
    assert orjson.loads(reply.body)["count"] >= 1


async def test_an_idle_websocket_has_no_read_deadline(server):
    async with open_websocket_url(server.ws_url) as ws:
        await trio.sleep(TIMEOUT_S + 0.5)
        request = {"type": "completion", "id": 1, "request": {"prompt": "a", "max_tokens": 2}}
        await ws.send_message(orjson.dumps(request).decode())
        while (message := orjson.loads(await ws.get_message()))["type"] == "chunk":
            pass
        assert message["type"] == "done"


async def test_a_websocket_that_never_reads_is_closed_and_its_descriptor_released(server):
    """Issue 11: 32 generations with top_logprobs 20, then 40 invalid frames, over a socket
    with a 4 KiB receive buffer that is never read. Before the edge, the close waited forever
    (shielded) behind the full queues: ESTABLISHED, then CLOSE-WAIT once the client left."""
    server_port = int(server.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        stream, inode = await stall_websocket(server.url, client)
        client_port = stream.socket.getsockname()[1]
        # The server gives up on the connection: its descriptor goes, its generations end.
        start = time.monotonic()
        with trio.fail_after(20):
            while inode in socket_inodes_of():
                await trio.sleep(0.05)
        print(f"descriptor released {time.monotonic() - start:.2f} s after the stall began")
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        text = await read_metrics(client, "")
        assert metric(text, "num_requests_waiting") == 0
        assert metric(text, "kv_cache_usage_perc") == 0
        # The client leaves: nothing of the connection is left in CLOSE-WAIT on our side.
        await stream.aclose()
        await trio.sleep(0.2)
        states = [r[2] for r in tcp_connections() if r[:2] == (server_port, client_port)]
        assert "CLOSE_WAIT" not in states and "ESTABLISHED" not in states, states
        assert (await client.get("/health")).status_code == 200  # the server carries on


# ---- Host check -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("localhost:8000", 200),
        ("LOCALHOST:1", 200),
        ("chat.localhost:3000", 200),
        ("127.0.0.1:8000", 200),
        ("127.0.0.2", 200),
        ("[::1]:8000", 200),
        ("api.example:443", 200),  # listed
        ("corp.example", 200),  # ".corp.example" allows it and its subdomains
        ("a.b.corp.example", 200),
        ("attacker.example", 403),  # DNS rebinding: the name resolves to 127.0.0.1
        ("attacker.example:8000", 403),
        ("localhost.attacker.example", 403),
        ("api.example.attacker.example", 403),
        ("notcorp.example", 403),
        ("192.168.1.5:8000", 403),
        ("[::1", 403),
        ("localhost:port", 403),
    ],
)
async def test_a_loopback_server_answers_only_loopback_and_listed_hosts(server, host, status):
    async with httpx.AsyncClient(base_url=server.url, headers={"Host": host}) as client:
        for response in (await client.get("/health"), await client.get("/v1/models")):
            assert response.status_code == status, response.text
            if status == 403:
                assert response.json()["error"]["code"] == "host_not_allowed"
                assert "access-control-allow-origin" not in response.headers


async def test_a_websocket_to_a_foreign_host_is_refused(server):
    def upgrade(host: bytes) -> bytes:
        return (
            b"GET /v1/ws HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )

    refused = await exchange(server.url, upgrade(b"attacker.example:8000"))
    assert refused.status == 403 and refused.error()["code"] == "host_not_allowed"
    accepted = await exchange(server.url, upgrade(b"localhost:8000"), timeout_s=0.5)
    assert accepted.status == 101


def test_the_host_check_follows_the_bind_address():
    assert HostPolicy.for_server("127.0.0.1", []).is_enabled
    assert HostPolicy.for_server("::1", []).is_enabled
    assert HostPolicy.for_server("localhost", []).is_enabled
    public = HostPolicy.for_server("0.0.0.0", [])
    assert not public.is_enabled and public.allows("anything.example")
    listed = HostPolicy.for_server("0.0.0.0", ["api.example"])
    assert listed.allows("api.example") and listed.allows("localhost:1")
    assert not listed.allows("other.example")
    assert not HostPolicy.for_server("127.0.0.1", ["*"]).is_enabled
    assert HostPolicy.for_server("127.0.0.1", []).allows(None)  # HTTP/1.0 without Host


# ---- CORS on refusals -----------------------------------------------------------------------
async def test_a_refused_origin_gets_no_cors_headers(server):
    async with httpx.AsyncClient(base_url=server.url) as client:
        evil = {"Origin": "https://evil.example"}
        for response in (
            await client.get("/v1/models", headers=evil),
            await client.post("/v1/completions", json={"prompt": "a"}, headers=evil),
            await client.options(
                "/v1/completions", headers={**evil, "Access-Control-Request-Method": "POST"}
            ),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "origin_not_allowed"
            assert not any(h.startswith("access-control-") for h in response.headers)
        allowed = await client.get("/v1/models", headers={"Origin": APP_ORIGIN})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
        # An allowed origin's errors keep their CORS headers (the page must read them).
        bad = await client.post("/v1/completions", json={}, headers={"Origin": APP_ORIGIN})
        assert bad.status_code == 400
        assert bad.headers["access-control-allow-origin"] == APP_ORIGIN
