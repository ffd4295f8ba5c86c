"""Clients for the web tests: SSE over httpx, raw HTTP over trio sockets, /metrics parsing."""

from __future__ import annotations

import re
import socket as stdlib_socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import trio

from triode.streaming.sse import DONE_DATA, SSEDecoder

CHAT = [{"role": "user", "content": "Tell me a story about a fox."}]


@dataclass
class SSEResult:
    status: int
    headers: httpx.Headers
    events: list[Any] = field(default_factory=list)  # parsed JSON, "[DONE]" kept as is
    times: list[float] = field(default_factory=list)  # arrival of each event (monotonic)

    @property
    def chunks(self) -> list[dict]:
        return [e for e in self.events if e != DONE_DATA]

    @property
    def is_done(self) -> bool:
        return bool(self.events) and self.events[-1] == DONE_DATA

    def text(self, index: int = 0) -> str:
        """Everything streamed for one choice (chat content or completion text)."""
        parts = []
        for chunk in self.chunks:
            for choice in chunk.get("choices", []):
                if choice["index"] != index:
                    continue
                if "delta" in choice:
                    parts.append(choice["delta"].get("content") or "")
                else:
                    parts.append(choice.get("text") or "")
        return "".join(parts)


async def stream_sse(client: httpx.AsyncClient, url: str, body: dict, **kwargs: Any) -> SSEResult:
    """POST a streaming request and read every event, timing each one."""
    decoder = SSEDecoder()
    async with client.stream("POST", url, json=body, **kwargs) as response:
        result = SSEResult(response.status_code, response.headers)
        if response.status_code != 200:
            result.events.append(orjson.loads(await response.aread()))
            return result
        async for raw in response.aiter_raw():
            now = time.monotonic()
            for data in decoder.feed(raw):
                result.events.append(data if data == DONE_DATA else orjson.loads(data))
                result.times.append(now)
    return result


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a `triode:` metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^triode:(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


async def read_metrics(client: httpx.AsyncClient, base_url: str) -> str:
    response = await client.get(f"{base_url}/metrics")
    assert response.status_code == 200
    return response.text


async def wait_for_metric(
    client: httpx.AsyncClient,
    base_url: str,
    name: str,
    predicate: Any,
    timeout_s: float = 10.0,
    **labels: str,
) -> tuple[float, float]:
    """Poll /metrics until `predicate(value)`; returns (value, seconds waited)."""
    start = time.monotonic()
    with trio.fail_after(timeout_s):
        while True:
            value = metric(await read_metrics(client, base_url), name, **labels)
            if predicate(value):
                return value, time.monotonic() - start
            await trio.sleep(0.005)


async def open_raw_request(
    base_url: str, path: str, body: dict, *, receive_buffer: int | None = None
) -> trio.SocketStream:
    """Send a POST over a plain socket and return it unread: the test decides when (and
    whether) to read, and when to drop the connection."""
    parts = urlsplit(base_url)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if receive_buffer is not None:  # a small window makes a non-reading client stall the writer
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, receive_buffer)
    await sock.connect((parts.hostname, parts.port))
    stream = trio.SocketStream(sock)
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    await stream.send_all(head + payload)
    return stream


async def read_until(stream: trio.SocketStream, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        assert len(data) < limit
    return data
