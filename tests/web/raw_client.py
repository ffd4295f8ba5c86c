"""A raw HTTP client for the edge tests: exact bytes out, everything the server sends back in,
and whether (and when) it closed the connection."""

from __future__ import annotations

import socket as stdlib_socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import trio


@dataclass
class RawReply:
    data: bytes  # everything received
    is_closed: bool  # the server ended the connection (EOF or reset)
    elapsed_s: float  # from the last byte sent to the close (or the timeout)

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/1.1 "):
            return None
        return int(self.data[9:12])

    @property
    def headers(self) -> dict[str, str]:
        head = self.data.partition(b"\r\n\r\n")[0].decode("latin1")
        pairs = (line.partition(":") for line in head.split("\r\n")[1:])
        return {name.strip().lower(): value.strip() for name, _, value in pairs}

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def error(self) -> dict:
        """The OpenAI error object of a JSON error response (asserting its shape)."""
        assert self.headers.get("content-type") == "application/json", self.data
        error = orjson.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return error


async def connect(base_url: str, *, receive_buffer: int | None = None) -> trio.SocketStream:
    parts = urlsplit(base_url)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so the window is small from the start
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, receive_buffer)
    await sock.connect((parts.hostname, parts.port))
    return trio.SocketStream(sock)


async def read_to_close(stream: trio.SocketStream, timeout_s: float) -> RawReply:
    """Read until the server closes the connection, or `timeout_s` passes."""
    data = b""
    start = time.monotonic()
    is_closed = False
    with trio.move_on_after(timeout_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: closed with our bytes unread
                is_closed = True
                break
            if not chunk:
                is_closed = True
                break
            data += chunk
    return RawReply(data, is_closed, time.monotonic() - start)


async def exchange(base_url: str, request: bytes, timeout_s: float = 10.0) -> RawReply:
    """Send `request` in one write and read the reply until the server closes."""
    stream = await connect(base_url)
    async with stream:
        await stream.send_all(request)
        return await read_to_close(stream, timeout_s)
