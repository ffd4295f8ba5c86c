"""The Vercel AI SDK's transports against a real tiny-model server, driven by the real `ai`
npm package (pinned in tests/node/package.json, installed here with `npm ci`) from node: a chat
turn streams, an abort stops the generation on the server, and a resume after a dropped
connection completes the message; plus the wire format and bad input, checked from Python."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.conftest import KEYED_SERVER_KEYS
from tests.web.helpers import metric, read_metrics, stream_sse, wait_for_metric
from triode.streaming.sse import DONE_DATA, SSEDecoder

pytestmark = pytest.mark.timeout(120)

NODE_DIR = Path(__file__).parents[1] / "node"
KEY = KEYED_SERVER_KEYS[0]
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "Tell me a story about a fox."
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned `ai` package installed next to the script."""
    binary, npm = shutil.which("node"), shutil.which("npm")
    if binary is None or npm is None:
        pytest.skip("node and npm are needed to drive triode with the AI SDK (not installed)")
    if not (NODE_DIR / "node_modules" / "ai" / "package.json").exists():
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"could not install the `ai` npm package: {output.decode()[-500:]}")
    return binary


@pytest.fixture
def server(keyed_server):
    return keyed_server


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AUTH) as client:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        yield client


async def run_node(node: str, server: Any, scenario: str, transport: str, body: dict) -> dict:
    args = [str(NODE_DIR / "ai_sdk_chat.mjs"), scenario, transport, server.url, KEY, PROMPT]
    flags = []
    if transport == "ws" and int(_node_major(node)) < 22:  # node 20-21: WebSocket behind a flag
        flags = ["--experimental-websocket"]
    with trio.fail_after(90):
        done = await trio.run_process(
            [node, *flags, *args, orjson.dumps(body).decode()],
            capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout.decode().strip().splitlines()[-1])


def _node_major(node: str) -> str:
    return (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout[1:].split(".")[0]
    )


_REFERENCE: dict[bytes, str] = {}


async def reference_text(client: httpx.AsyncClient, body: dict) -> str:
    """An uninterrupted greedy run's text (once per body: the transports share it)."""
    key = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if key not in _REFERENCE:
        messages = [{"role": "user", "content": PROMPT}]
        result = await stream_sse(
            client, "/v1/chat/completions", {**body, "messages": messages, "stream": True}
        )
        assert result.is_done
        _REFERENCE[key] = result.text()
    return _REFERENCE[key]


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_chat_turn_streams(node, server, client, transport):
    body = {**GREEDY, "max_tokens": 24}
    result = await run_node(node, server, "chat", transport, body)
    assert result["errors"] == [] and result["status"] == "ready", result
    assert result["numMessages"] == 2 and result["messageId"].startswith("chatcmpl-")
    assert result["finished"]["isError"] is False and result["finished"]["isAbort"] is False
    assert result["text"] == await reference_text(client, body)


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_an_abort_stops_the_generation_on_the_server(node, server, client, transport):
    before = await read_metrics(client, "")
    body = {**GREEDY, "max_tokens": 900}
    if transport == "ws":
        body["resumable"] = True  # an explicit abort stops even a resumable stream
    result = await run_node(node, server, "abort", transport, body)
    assert result["finished"]["isAbort"] is True, result
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    after = await read_metrics(client, "")
    assert metric(after, "request_success_total", finished_reason="abort") == (
        metric(before, "request_success_total", finished_reason="abort") + 1
    )
    generated = metric(after, "generation_tokens_total") - metric(before, "generation_tokens_total")
    assert generated < 900  # stopped well before its end
    assert metric(after, "kv_cache_usage_perc") == 0.0


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_resume_after_a_dropped_connection_completes_the_message(
    node, server, client, transport
):
    before = await read_metrics(client, "")
    body = {**GREEDY, "max_tokens": 300, "resumable": True}
    result = await run_node(node, server, "resume", transport, body)
    assert result["status"] == "ready", result
    # The drop left a partial message; the resume replayed it whole and finished it.
    assert result["textAfterDrop"] is not None and len(result["textAfterDrop"]) < len(
        result["text"]
    )
    assert result["numMessages"] == 2
    assert result["text"] == await reference_text(client, {**GREEDY, "max_tokens": 300})
    after = await read_metrics(client, "")
    assert metric(after, "resumable_streams_resumes_total") == (
        metric(before, "resumable_streams_resumes_total") + 1
    )


async def test_the_ui_message_stream_on_the_wire(client):
    body = {
        "id": "chat-wire",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": PROMPT}]}],
        "trigger": "submit-message",
        **GREEDY,
        "max_tokens": 8,
    }
    decoder, events = SSEDecoder(), []
    async with client.stream("POST", "/v1/ai-sdk/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["content-type"].startswith("text/event-stream")
        async for raw in response.aiter_raw():
            events.extend(decoder.feed(raw))
    assert events[-1] == DONE_DATA
    parts = [orjson.loads(e) for e in events[:-1]]
    kinds = [p["type"] for p in parts]
    assert kinds[:2] == ["start", "text-start"] and kinds[-2:] == ["text-end", "finish"]
    assert set(kinds[2:-2]) == {"text-delta"}
    assert parts[-1]["finishReason"] == "length"
    assert parts[0]["messageId"].startswith("chatcmpl-")
    text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    assert text == await reference_text(client, {**GREEDY, "max_tokens": 8})
    # No resumable stream for this chat: reconnecting finds nothing.
    assert (await client.get("/v1/ai-sdk/chat/chat-wire/stream")).status_code == 204


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"id": None}, "id"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "parts": [{"type": "file", "url": "x"}]}]}, "messages"),
        ({"messages": [{"role": "robot", "parts": []}]}, "messages"),
        ({"trigger": "explode"}, "trigger"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(client, change, param):
    body = {
        "id": "chat-bad",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        **change,
    }
    body = {k: v for k, v in body.items() if v is not None}
    response = await client.post("/v1/ai-sdk/chat", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


async def test_websocket_frames_that_cannot_be_understood(server):
    async with open_websocket_url(f"{server.ws_url.replace('/v1/ws', '/v1/ai-sdk/ws')}"
                                  f"?api_key={KEY}") as ws:  # fmt: skip
        for frame, request_id in (
            (b"not json", ""),
            ({"type": "send"}, ""),
            ({"type": "teleport", "requestId": "r1"}, "r1"),
            ({"type": "send", "requestId": "r2", "id": "c", "messages": []}, "r2"),
        ):
            await ws.send_message(frame if isinstance(frame, bytes) else orjson.dumps(frame))
            with trio.fail_after(30):
                reply = orjson.loads(await ws.get_message())
            assert reply["type"] == "error" and reply["requestId"] == request_id, reply
            assert reply["errorText"]
        # The socket still serves; an unknown chat has nothing to resume.
        await ws.send_message(orjson.dumps({"type": "resume", "requestId": "r3", "id": "nope"}))
        with trio.fail_after(30):
            assert orjson.loads(await ws.get_message()) == {"type": "no-active", "requestId": "r3"}
