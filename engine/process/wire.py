"""Framed pickles over a socket: how the actor and its engine-core process talk.

Each message is a 4-byte little-endian length and a pickle of plain data (tuples, dataclasses
of ints/strings/lists: `EngineInput`, `RequestDelta`, `SchedulerStats`). `BlockingFrames` is
the engine process's side (blocking socket, plus a non-blocking look between steps);
`TrioFrames` is the actor's (a trio stream, one sender task at a time).
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from typing import Any

import trio

_HEADER = struct.Struct("<I")
_READ_SIZE = 1 << 16


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _pop_frame(buffer: bytearray) -> tuple[bool, Any]:
    """(True, message) if `buffer` starts with a whole frame (removed from it), else (False,
    None)."""
    if len(buffer) < _HEADER.size:
        return False, None
    (size,) = _HEADER.unpack_from(buffer)
    end = _HEADER.size + size
    if len(buffer) < end:
        return False, None
    message = pickle.loads(memoryview(buffer)[_HEADER.size : end])
    del buffer[:end]
    return True, message


class BlockingFrames:
    """The engine process's end. `receive(block=False)` returns None when no whole message is
    there yet; EOFError when the actor's end closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def send(self, message: Any) -> None:
        self.sock.sendall(encode(message))

    def receive(self, block: bool = True) -> Any:
        while True:
            found, message = _pop_frame(self._buffer)
            if found:
                return message
            if not block and not select.select([self.sock], [], [], 0)[0]:
                return None
            chunk = self.sock.recv(_READ_SIZE)
            if not chunk:
                raise EOFError("the other end closed the connection")
            self._buffer += chunk


class TrioFrames:
    """The actor's end, over a trio stream. EOFError when the engine process's end closed."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.StrictFIFOLock()

    async def send(self, message: Any) -> None:
        data = encode(message)
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> Any:
        while True:
            found, message = _pop_frame(self._buffer)
            if found:
                return message
            chunk = await self.stream.receive_some(_READ_SIZE)
            if not chunk:
                raise EOFError("the engine process closed its connection")
            self._buffer += chunk
