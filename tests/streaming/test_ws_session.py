"""WebSocketSession's protocol over an in-memory socket, with generations the test drives.

The server-level behaviour (a real engine, real sockets) is in tests/web/test_websocket.py;
here every rule of the envelope is pinned down exactly: ids, errors, limits, cancel, close.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from triode.streaming.records import Record, event_record
from triode.streaming.ws_limits import WebSocketLimits
from triode.streaming.ws_session import WebSocketSession


class MemorySocket:
    """Both ends of a socket: the test plays the client through `client_*`."""

    def __init__(self) -> None:
        self.client_send, self._server_receive = trio.open_memory_channel[str](100)
        self._server_send, self.client_receive = trio.open_memory_channel[dict](1000)

    async def send(self, data: str) -> None:
        await self._server_send.send(orjson.loads(data))

    async def receive(self) -> str:
        return await self._server_receive.receive()  # EndOfChannel once the client closes

    async def request(self, message: Any) -> None:
        await self.client_send.send(
            message if isinstance(message, str) else orjson.dumps(message).decode()
        )

    async def next(self) -> dict:
        with trio.fail_after(5):
            return await self.client_receive.receive()

    def pending(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.client_receive.receive_nowait())
            except trio.WouldBlock:
                return out


class Scripted:
    """A generation whose chunks the test pushes with `feed`."""

    def __init__(self) -> None:
        self.feed, self._chunks = trio.open_memory_channel[Any](100)
        self.num_chunks = 0
        self.is_closed = False

    def __aiter__(self) -> Scripted:
        return self

    async def __anext__(self) -> Record:
        try:
            item = await self._chunks.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Record):
            return item
        self.num_chunks += 1
        return event_record(item)

    @property
    def usage(self) -> dict:
        return {"completion_tokens": self.num_chunks}

    async def aclose(self, cancelled: bool = False) -> None:
        self.is_closed = True
        self.was_cancelled = cancelled


class Backend:
    def __init__(self) -> None:
        self.started: dict[str, Scripted] = {}

    async def start(self, kind: str, request: dict) -> Scripted:
        if "fail" in request:
            raise ValueError(request["fail"])
        generation = Scripted()
        self.started[request["name"]] = generation
        return generation

    def error_object(self, exc: BaseException) -> dict:
        return {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}


async def wait_started(backend: Backend, name: str) -> Scripted:
    with trio.fail_after(5):
        while name not in backend.started:
            await trio.sleep(0.001)
    return backend.started[name]


def gen(id_: Any, name: str, kind: str = "completion") -> dict:
    return {"type": kind, "id": id_, "request": {"name": name}}


@pytest.fixture
async def session(nursery):
    socket, backend = MemorySocket(), Backend()
    limits = WebSocketLimits(max_connections=0, max_generations_per_socket=2, max_generations=3)
    ws = WebSocketSession(socket, backend, limits)
    done = trio.Event()

    async def run() -> None:
        await ws.run()
        done.set()

    nursery.start_soon(run)
    return socket, backend, ws, limits, done


async def test_generations_interleave_and_cancel_ends_only_one(session):
    socket, backend, ws, limits, _ = session
    await socket.request(gen("a", "a"))
    await socket.request(gen(7, "b", "chat.completion"))
    a, b = await wait_started(backend, "a"), await wait_started(backend, "b")
    await a.feed.send({"t": "a1"})
    assert await socket.next() == {"type": "chunk", "id": "a", "chunk": {"t": "a1"}}
    await b.feed.send({"t": "b1"})
    assert await socket.next() == {"type": "chunk", "id": 7, "chunk": {"t": "b1"}}
    await socket.request({"type": "cancel", "id": "a"})
    assert await socket.next() == {
        "type": "done",
        "id": "a",
        "usage": {"completion_tokens": 1},
        "cancelled": True,
    }
    assert a.is_closed and not b.is_closed
    await b.feed.send({"t": "b2"})
    await b.feed.aclose()
    assert await socket.next() == {"type": "chunk", "id": 7, "chunk": {"t": "b2"}}
    assert await socket.next() == {"type": "done", "id": 7, "usage": {"completion_tokens": 2}}
    assert b.is_closed and ws.num_running == 0 and limits.num_generations == 0


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ("{not json", None),
        ("[1, 2]", None),
        ('{"type": "completions", "id": 1}', "type"),
        ('{"type": "completion", "request": {}}', "id"),
        ('{"type": "completion", "id": "", "request": {}}', "id"),
        ('{"type": "completion", "id": true, "request": {}}', "id"),
        ('{"type": "completion", "id": {"x": 1}, "request": {}}', "id"),
    ],
)
async def test_malformed_messages_get_an_error_with_null_id_and_the_socket_stays_open(
    session, raw, param
):
    socket, backend, *_ = session
    await socket.request(raw)
    reply = await socket.next()
    assert reply["type"] == "error" and reply["id"] is None
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param
    await socket.request(gen("ok", "ok"))  # still serving
    generation = await wait_started(backend, "ok")
    await generation.feed.aclose()
    assert (await socket.next())["type"] == "done"


async def test_missing_request_object_is_an_error_for_that_id(session):
    socket, *_ = session
    await socket.request({"type": "completion", "id": "x", "request": "hello"})
    reply = await socket.next()
    assert reply["id"] == "x" and reply["error"]["param"] == "request"


async def test_duplicate_id_is_refused_without_touching_the_running_generation(session):
    socket, backend, *_ = session
    await socket.request(gen("same", "first"))
    first = await wait_started(backend, "first")
    await socket.request(gen("same", "second"))
    reply = await socket.next()
    assert reply["type"] == "error" and reply["id"] is None
    assert reply["error"]["code"] == "duplicate_id"
    assert "second" not in backend.started
    await first.feed.send({"t": 1})
    await first.feed.aclose()
    assert (await socket.next())["type"] == "chunk"
    assert (await socket.next())["type"] == "done"
    await socket.request(gen("same", "third"))  # free again once done was sent
    await wait_started(backend, "third")


async def test_per_socket_and_global_limits(session, nursery):
    socket, backend, _, limits, _ = session
    await socket.request(gen(1, "g1"))
    await socket.request(gen(2, "g2"))
    await wait_started(backend, "g2")
    await socket.request(gen(3, "g3"))
    reply = await socket.next()
    assert reply["id"] == 3 and reply["error"]["code"] == "too_many_generations"

    # A second socket shares the global limit of 3: one more fits, the next does not.
    other, other_backend = MemorySocket(), Backend()
    nursery.start_soon(WebSocketSession(other, other_backend, limits).run)
    await other.request(gen("x", "x"))
    await wait_started(other_backend, "x")
    await other.request(gen("y", "y"))
    reply = await other.next()
    assert reply["id"] == "y" and reply["error"]["code"] == "server_overloaded"
    assert limits.num_generations == 3


async def test_start_failure_is_an_error_for_that_id(session):
    socket, _, ws, *_ = session
    await socket.request({"type": "completion", "id": "bad", "request": {"fail": "nope"}})
    reply = await socket.next()
    assert reply == {
        "type": "error",
        "id": "bad",
        "error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None},
    }
    assert ws.num_running == 0


async def test_error_during_iteration_ends_that_generation_with_an_error(session):
    socket, backend, *_ = session
    await socket.request(gen("e", "e"))
    generation = await wait_started(backend, "e")
    await generation.feed.send(RuntimeError("engine broke"))
    reply = await socket.next()
    assert reply["type"] == "error" and reply["id"] == "e"
    assert reply["error"]["message"] == "engine broke"
    assert generation.is_closed


async def test_cancelling_an_unknown_id_sends_nothing(session):
    socket, *_ = session
    await socket.request({"type": "cancel", "id": "never"})
    await socket.request({"type": "cancel", "id": None})
    await trio.sleep(0.05)
    assert socket.pending() == []


async def test_closing_the_socket_closes_every_generation(session):
    socket, backend, _, limits, done = session
    await socket.request(gen("a", "a"))
    await socket.request(gen("b", "b"))
    a, b = await wait_started(backend, "a"), await wait_started(backend, "b")
    await socket.client_send.aclose()
    with trio.fail_after(5):
        await done.wait()
    assert a.is_closed and b.is_closed
    assert limits.num_generations == 0


async def test_draining_refuses_new_generations_and_ends_when_idle(nursery):
    socket, backend = MemorySocket(), Backend()
    draining, done = trio.Event(), trio.Event()

    async def run() -> None:
        await WebSocketSession(socket, backend).run(draining)
        done.set()

    nursery.start_soon(run)
    await socket.request(gen("a", "a"))
    a = await wait_started(backend, "a")
    draining.set()
    await socket.request(gen("b", "b"))
    reply = await socket.next()
    assert reply["id"] == "b" and reply["error"]["code"] == "server_shutting_down"
    assert not done.is_set()
    await a.feed.aclose()
    assert (await socket.next())["type"] == "done"
    with trio.fail_after(5):
        await done.wait()
