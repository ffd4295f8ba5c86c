"""API key, browser origins, and every limit, on a server configured with all of them."""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.web.conftest import running_server, tiny_engine_config
from tests.web.helpers import CHAT, stream_sse, wait_for_metric
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(120)

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def guarded_server(tiny_folder):
    engine_config = tiny_engine_config(tiny_folder, max_num_seqs=1, max_num_waiting=1)
    server_config = ServerConfig(
        port=0,
        api_key=KEY,
        allowed_origins=[APP_ORIGIN],
        max_ws_connections=2,
        max_ws_generations_per_socket=1,
        max_request_bytes=64 * 1024,
        shutdown_timeout_s=2.0,
    )
    yield from running_server(engine_config, server_config)


@pytest.fixture
async def client(guarded_server):
    async with httpx.AsyncClient(base_url=guarded_server.url, timeout=30) as client:
        yield client


def error_code(response: httpx.Response, status: int) -> str | None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["code"]


async def test_api_key_is_required_on_http(client):
    body = {"prompt": "hi", "max_tokens": 2}
    assert error_code(await client.post("/v1/completions", json=body), 401) == "invalid_api_key"
    wrong = {"Authorization": "Bearer nope"}
    assert error_code(await client.post("/v1/completions", json=body, headers=wrong), 401)
    assert error_code(await client.get("/v1/models"), 401)
    assert (await client.post("/v1/completions", json=body, headers=AUTH)).status_code == 200
    # Load balancers and Prometheus need no key.
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_api_key_on_the_websocket_handshake(guarded_server):
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(guarded_server.ws_url):
            pass
    assert refused.value.status_code == 401
    assert orjson.loads(refused.value.body)["error"]["code"] == "invalid_api_key"

    header = [(b"authorization", f"Bearer {KEY}".encode())]
    async with open_websocket_url(guarded_server.ws_url, extra_headers=header) as ws:
        assert ws.subprotocol is None
    async with open_websocket_url(f"{guarded_server.ws_url}?api_key={KEY}"):
        pass
    async with open_websocket_url(
        guarded_server.ws_url, subprotocols=["triode", f"bearer.{KEY}"]
    ) as ws:
        assert ws.subprotocol == "triode"  # the key is never echoed back
        await ws.send_message(
            orjson.dumps(
                {"type": "completion", "id": 1, "request": {"prompt": "a", "max_tokens": 2}}
            ).decode()
        )
        while (message := orjson.loads(await ws.get_message()))["type"] == "chunk":
            pass
        assert message["type"] == "done"


async def test_cors_preflight_and_origin_policy(client, guarded_server):
    preflight = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response = await client.options("/v1/chat/completions", headers=preflight)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"

    evil = {**preflight, "Origin": "https://evil.example"}
    assert (
        error_code(await client.options("/v1/chat/completions", headers=evil), 403)
        == "origin_not_allowed"
    )
    body = {"messages": CHAT, "max_tokens": 2}
    refused = await client.post(
        "/v1/chat/completions", json=body, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert error_code(refused, 403) == "origin_not_allowed"

    for origin in (APP_ORIGIN, "http://localhost:5173", guarded_server.url):
        ok = await client.post(
            "/v1/chat/completions", json=body, headers={**AUTH, "Origin": origin}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == origin

    header = [(b"authorization", f"Bearer {KEY}".encode()), (b"origin", b"https://evil.example")]
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(guarded_server.ws_url, extra_headers=header):
            pass
    assert rejected.value.status_code == 403


async def test_websocket_connection_and_generation_limits(guarded_server):
    url = f"{guarded_server.ws_url}?api_key={KEY}"
    async with open_websocket_url(url) as first, open_websocket_url(url):
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(url):
                pass
        assert refused.value.status_code == 503
        assert orjson.loads(refused.value.body)["error"]["code"] == "too_many_connections"

        long = {"prompt": "a", "max_tokens": 200, "ignore_eos": True}
        await first.send_message(
            orjson.dumps({"type": "completion", "id": "one", "request": long}).decode()
        )
        await first.send_message(
            orjson.dumps({"type": "completion", "id": "two", "request": long}).decode()
        )
        while (message := orjson.loads(await first.get_message()))["type"] == "chunk":
            pass
        assert message["id"] == "two" and message["error"]["code"] == "too_many_generations"
        await first.send_message(orjson.dumps({"type": "cancel", "id": "one"}).decode())
    async with open_websocket_url(url):  # the slots were given back
        pass


async def test_full_queue_is_503_with_retry_after(client):
    long = {"prompt": "a", "max_tokens": 800, "ignore_eos": True, "stream": True}

    async def hold() -> None:
        await stream_sse(client, "/v1/completions", long, headers=AUTH)

    async with trio.open_nursery() as holders:
        holders.start_soon(hold)  # runs (max_num_seqs=1)
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 1)
        holders.start_soon(hold)  # waits (max_num_waiting=1)
        await wait_for_metric(client, "", "num_requests_waiting", lambda v: v == 1)
        response = await client.post("/v1/completions", json={"prompt": "a"}, headers=AUTH)
        assert error_code(response, 503) == "server_overloaded"
        assert int(response.headers["retry-after"]) >= 1
        holders.cancel_scope.cancel()  # both clients leave: both requests are aborted
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    await wait_for_metric(client, "", "num_requests_waiting", lambda v: v == 0)


async def test_oversized_body_is_413(client):
    body = {"prompt": "x" * 100_000}
    response = await client.post("/v1/completions", json=body, headers=AUTH)
    assert error_code(response, 413) == "request_entity_too_large"
