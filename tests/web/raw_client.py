"""A raw HTTP client for the edge tests: exact bytes out, everything the server sends back in,
and whether (and when) it closed the connection."""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, TextMessage
from wsproto.events import Request as WSRequest

from tests.web.helpers import metric, read_metrics


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


async def open_raw_websocket(
    base_url: str, *, receive_buffer: int | None = None
) -> tuple[trio.SocketStream, WSConnection]:
    """A WebSocket to /v1/ws over a plain socket (wsproto does the framing): the test decides
    when, and whether, to read."""
    stream = await connect(base_url, receive_buffer=receive_buffer)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(WSRequest(host="localhost", target="/v1/ws")))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        assert chunk, "the server closed the handshake"
        data += chunk
    ws.receive_data(data)
    assert any(isinstance(e, AcceptConnection) for e in ws.events()), data
    return stream, ws


def socket_inodes_of(pid: int | str = "self") -> set[int]:
    """The inodes of the sockets a process holds open (from /proc/PID/fd)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tcp_connections() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4/IPv6 TCP socket on the machine."""
    states = {"01": "ESTABLISHED", "08": "CLOSE_WAIT", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "07": "CLOSE"}  # fmt: skip
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                state = states.get(fields[3], fields[3])
                rows.append((local_port, remote_port, state, int(fields[9])))
    return rows


STALLING = {
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 900,
    "ignore_eos": True,
    "logprobs": True,
    "top_logprobs": 20,
}


async def stall_websocket(url: str, client: httpx.AsyncClient) -> tuple[trio.SocketStream, int]:
    """Open the never-reading WebSocket, start the 32 generations, wait until the server's
    writes are blocked, then send the 40 invalid frames (each wants an error message sent, so
    the session's reader now waits behind the blocked write and the queues before it fill).
    Returns the socket and the inode of the server's end of it."""
    stream, ws = await open_raw_websocket(url, receive_buffer=4096)
    server_port = int(url.rsplit(":", 1)[1])
    inode = server_side_inode(server_port, stream.socket.getsockname()[1])
    for i in range(32):
        message = {"type": "chat.completion", "id": i, "request": STALLING}
        await stream.send_all(frame(ws, orjson.dumps(message).decode()))
    # Blocked for real: each chunk with 20 top logprobs is over 1 KB and the client's window
    # is 4 KiB, so 500 tokens are far more than the socket buffers hold. (A slow machine may
    # reach the send timeout first: the server has then already cut the connection.)
    baseline = metric(await read_metrics(client, ""), "generation_tokens_total")
    pair = (server_port, stream.socket.getsockname()[1])
    with trio.fail_after(60):
        while metric(await read_metrics(client, ""), "generation_tokens_total") < baseline + 500:
            if not any(r[:3] == (*pair, "ESTABLISHED") for r in tcp_connections()):
                break
            await trio.sleep(0.02)
    # The server may have stopped reading too (never hang here), or already given up on us.
    with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
        for _ in range(40):
            await stream.send_all(frame(ws, "not json"))
    return stream, inode


def frame(ws: WSConnection, text: str) -> bytes:
    """A client text frame (masked, as a client's must be)."""
    return ws.send(TextMessage(data=text))


def server_side_inode(server_port: int, client_port: int) -> int:
    """The inode of the server's end of a connection (both ends on this machine)."""
    rows = [r for r in tcp_connections() if r[0] == server_port and r[1] == client_port]
    assert len(rows) == 1, rows
    return rows[0][3]
