"""The edge under hostile bytes: a connection's protocol error ends that connection only, every
error the HTTP layer answers itself is OpenAI-shaped JSON, and the framing rules hold."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest
import trio

from tests.web.raw_client import exchange
from triode.web.edge import EdgeLimits, serve_edge
from triode.web.server import hypercorn_config
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(60)

# The exact bytes of issue 11's one-request crash: a WebSocket upgrade with one byte after it.
UPGRADE_WITH_TRAILING_BYTE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nx"
)
INNOCENT = {"prompt": "Once", "max_tokens": 40, "ignore_eos": True, "stream": True}


async def _innocent_stream_while(server_url: str, hostile: list[bytes]) -> tuple:
    """Run an innocent SSE stream; once it has its first chunk, send each hostile request on
    its own connection. Returns the stream's result and the hostile replies."""
    replies = []
    async with httpx.AsyncClient(base_url=server_url, timeout=30) as client:
        result: dict = {}
        first_chunk = trio.Event()

        async def innocent() -> None:
            async with client.stream("POST", "/v1/completions", json=INNOCENT) as response:
                body = b""
                async for raw in response.aiter_raw():
                    body += raw
                    first_chunk.set()
            result["body"] = body

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent)
            await first_chunk.wait()
            for request in hostile:
                replies.append(await exchange(server_url, request))
        assert (await client.get("/health")).status_code == 200
    events = [line[6:] for line in result["body"].split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["text"]]
    return text_chunks, replies


async def test_websocket_upgrade_with_a_trailing_byte_ends_only_that_connection(tiny_server):
    # Several times: the crash was a race between hypercorn's 400 and the app's answer.
    text_chunks, replies = await _innocent_stream_while(
        tiny_server.url, [UPGRADE_WITH_TRAILING_BYTE] * 5
    )
    assert len(text_chunks) >= 1  # the innocent stream went on to its 40 tokens (checked above)
    for reply in replies:
        assert reply.status == 400 and reply.is_closed
        assert reply.error()["type"] == "invalid_request_error"


OVERSIZE_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
PROTOCOL_ERRORS = {
    "garbage-request-line": (b"GARBAGE\r\n\r\n", 400),
    "http-2.0": (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "http-1.2": (b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    "http-0.9": (b"GET /health HTTP/0.9\r\n\r\n", 505),
    "h2-prior-knowledge": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "transfer-encoding-gzip": (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "oversize-head": (OVERSIZE_HEAD, 431),
    "bad-content-length": (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    "conflicting-content-lengths": (
        b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400
    ),
    "nul-in-header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "missing-host-http-1.1": (b"GET /health HTTP/1.1\r\n\r\n", 400),
    "websocket-upgrade-without-key": (
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n", 400
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROTOCOL_ERRORS))
async def test_protocol_errors_get_json_and_end_the_connection(tiny_server, name):
    request, status = PROTOCOL_ERRORS[name]
    reply = await exchange(tiny_server.url, request)
    assert reply.status == status, reply.data
    assert reply.is_closed
    error = reply.error()
    assert error["code"] and error["message"]
    assert reply.headers["connection"] == "close"
    async with httpx.AsyncClient(base_url=tiny_server.url) as client:
        assert (await client.get("/health")).status_code == 200


async def test_content_length_with_transfer_encoding_is_refused_and_closed(tiny_server):
    """RFC 9112 6.3: ambiguous framing. The pipelined request after it must not be served
    (a proxy framing by Content-Length would have seen it as part of the body)."""
    smuggled = (
        b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    reply = await exchange(tiny_server.url, smuggled)
    assert reply.status == 400 and reply.is_closed
    assert reply.error()["code"] == "ambiguous_framing"
    assert reply.data.count(b"HTTP/1.1 ") == 1  # the pipelined GET got nothing


async def test_h2c_upgrade_is_answered_in_http_1_1(tiny_server):
    request = (
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    stream_reply = await exchange(tiny_server.url, request, timeout_s=1.0)
    assert stream_reply.status == 200  # not 101 Switching Protocols
    assert orjson.loads(stream_reply.body) == {"status": "ok"}


# ---- containment of failures the protocol code raises ----------------------------------------
async def _app_tripping_a_hypercorn_bug(scope, receive, send) -> None:
    """A WebSocket app that accepts with a subprotocol the client did not offer: hypercorn
    marks the socket connected before the handshake fails, then its cleanup raises
    AttributeError outside the app's error handling (the bug behind pgjones/hypercorn#225).
    Plain HTTP requests stream a slow body, the connection that must survive."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "never-offered"})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(10):
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
            await trio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"end\n"})


async def test_an_error_escaping_hypercorn_ends_only_its_connection(caplog):
    caplog.set_level(logging.WARNING, logger="triode.web.edge")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_edge(
                _app_tripping_a_hypercorn_bug,
                hypercorn_config(ServerConfig(port=0)),
                EdgeLimits(),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        url = binds[0]
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            trio.open_nursery() as requests,
        ):
            slow_body: list[bytes] = []

            async def slow_request() -> None:
                async with client.stream("GET", "/") as response:
                    slow_body.extend([chunk async for chunk in response.aiter_bytes()])

            requests.start_soon(slow_request)
            upgrade = (
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            for _ in range(3):
                reply = await exchange(url, upgrade, timeout_s=5)
                assert reply.is_closed
            assert (await client.get("/")).status_code == 200  # new connections still served
        stop.set()
    assert b"".join(slow_body).endswith(b"9\nend\n")  # the concurrent connection finished
    contained = [r for r in caplog.records if "closed a connection after" in r.getMessage()]
    assert len(contained) == 3, [r.getMessage() for r in caplog.records]
