"""WebSocketSession: triode's /v1/ws protocol, many generations over one socket by client id.

Text frames of JSON. Client to server:

    {"type": "chat.completion" | "completion", "id": ID, "request": {...HTTP body...}}
    {"type": "cancel", "id": ID}
    {"type": "resume", "id": STREAM_ID, "after": N}        (a resumable stream, any socket)

Server to client:

    {"type": "chunk", "id": ID, "chunk": {...the SSE chunk object...}}
    {"type": "done", "id": ID, "usage": {...}}              (+ "cancelled": true after a cancel)
    {"type": "error", "id": ID | null, "error": {"message", "type", "param", "code"}}

Every accepted generation ends with exactly one `done` or `error` carrying its id, and its id is
free for reuse once that message is sent. An `error` with `"id": null` is about a message that
started nothing: unreadable JSON, an unknown type, a missing or malformed id, or an id already
in use (the running generation is unaffected). Cancelling an unknown or finished id is a no-op.

Resumable streams (`"resumable": true` in the request, or the server's default): every message
of the stream also carries `"seq"`, its sequence number, and the chunks' `id` field is the stream
id. Closing the socket then only detaches: the generation keeps running for the stream's window.
`resume` reads the stream STREAM_ID from after sequence number N (-1 or absent: from the start)
and continues live, under the id STREAM_ID on this socket; `cancel` of a resumable generation
stops it for every reader. Closing the socket stops every plain generation on it.

The session only knows the envelope: what a generation is comes from the `GenerationBackend`
the web layer passes in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from triode.streaming.records import Record, RecordKind
from triode.streaming.ws_limits import WebSocketLimits
from triode.streaming.ws_mux import (
    MAX_ID_LENGTH,
    JobKey,
    Running,
    Transport,
    WebSocketMux,
    error_object,
    is_valid_key,
)

GENERATION_KINDS = ("chat.completion", "completion")
RESUME = "resume"

__all__ = ["GENERATION_KINDS", "Generation", "GenerationBackend", "Transport", "WebSocketSession"]


class Generation(Protocol):
    """A started (or resumed) generation: an async iterator of records."""

    def __aiter__(self) -> AsyncIterator[Record]: ...

    @property
    def usage(self) -> dict[str, Any] | None: ...

    async def aclose(self, cancelled: bool = False) -> None:
        """Stop following the generation: a plain one is aborted if unfinished, a resumable
        one only when `cancelled` (the client asked it to stop). Idempotent; safe when
        cancelled."""


class GenerationBackend(Protocol):
    async def start(self, kind: str, request: dict[str, Any]) -> Generation:
        """Validate and submit a request; raise to refuse it."""

    async def resume(self, stream_id: str, after: int) -> Generation:
        """Follow a held resumable stream from after `after`; raise to refuse."""

    def error_object(self, exc: BaseException) -> dict[str, Any]:
        """The OpenAI error object for an exception raised by `start`, `resume` or iteration."""


class WebSocketSession(WebSocketMux):
    def __init__(
        self,
        transport: Transport,
        backend: GenerationBackend,
        limits: WebSocketLimits | None = None,
        kinds: tuple[str, ...] = GENERATION_KINDS,
    ) -> None:
        super().__init__(transport, limits)
        self._backend = backend
        self._kinds = kinds

    async def on_bad_message(self, error: dict[str, Any]) -> None:
        await self._send_error(None, error)

    async def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "cancel":
            self.cancel(message.get("id"))
        elif kind in self._kinds:
            await self._start(kind, message)
        elif kind == RESUME:
            await self._resume(message)
        else:
            allowed = ", ".join(repr(k) for k in (*self._kinds, "cancel", RESUME))
            await self._send_error(
                None,
                error_object(
                    f"unknown message type {kind!r}; expected one of {allowed}", param="type"
                ),
            )

    async def _check_new_id(self, gen_id: Any) -> bool:
        """Refuse (with an id-less error) a malformed id or one in use."""
        if not is_valid_key(gen_id):
            await self._send_error(
                None,
                error_object(
                    f"id must be a non-empty string (at most {MAX_ID_LENGTH} characters) or an "
                    f"integer, got {gen_id!r}",
                    param="id",
                ),
            )
            return False
        if self.is_running(gen_id):
            await self._send_error(
                None,
                error_object(
                    f"id {gen_id!r} is already in use by a running generation",
                    param="id",
                    code="duplicate_id",
                ),
            )
            return False
        return True

    async def _start(self, kind: str, message: dict[str, Any]) -> None:
        gen_id = message.get("id")
        if not await self._check_new_id(gen_id):
            return
        request = message.get("request")
        refusal = (
            error_object("request must be a JSON object (the HTTP body)", param="request")
            if not isinstance(request, dict)
            else self.refusal()
        )
        if refusal is not None:
            await self._send_error(gen_id, refusal)
            return
        assert isinstance(request, dict)
        self._spawn_generation(gen_id, lambda: self._backend.start(kind, request))

    async def _resume(self, message: dict[str, Any]) -> None:
        stream_id, after = message.get("id"), message.get("after", -1)
        if not await self._check_new_id(stream_id):
            return
        refusal = self.refusal()
        if not isinstance(stream_id, str):
            refusal = error_object("id must be the stream's id (a string)", param="id")
        elif isinstance(after, bool) or not isinstance(after, int) or after < -1:
            refusal = error_object(
                f"after must be a sequence number (an integer >= -1), got {after!r}",
                param="after",
            )
        if refusal is not None:
            await self._send_error(stream_id, refusal)
            return
        assert isinstance(stream_id, str)
        self._spawn_generation(stream_id, lambda: self._backend.resume(stream_id, after))

    def _spawn_generation(self, gen_id: JobKey, open_: Callable[[], Awaitable[Generation]]) -> None:
        async def job(running: Running) -> bytes | None:
            return await self._run_generation(gen_id, open_, running)

        self.spawn(gen_id, job)

    async def _run_generation(
        self, gen_id: JobKey, open_: Callable[[], Awaitable[Generation]], running: Running
    ) -> bytes | None:
        generation: Generation | None = None
        final: bytes | None = None
        key = orjson.dumps(gen_id)
        try:
            with running.scope:
                try:
                    generation = await open_()
                    async for record in generation:
                        framed = frame(key, record)
                        if record.is_terminal:
                            final = framed
                            break
                        await self.send_bytes(framed)
                    else:  # a generation that ends without a terminal record
                        final = orjson.dumps(
                            {"type": "done", "id": gen_id, "usage": generation.usage}
                        )
                except Exception as exc:
                    final = self._error(gen_id, self._error_of(exc))
            if running.scope.cancelled_caught and running.is_cancelled_by_client:
                usage = generation.usage if generation is not None else None
                final = orjson.dumps(
                    {"type": "done", "id": gen_id, "usage": usage, "cancelled": True}
                )
        finally:
            if generation is not None:  # aborts or detaches; shielded inside
                await generation.aclose(cancelled=running.is_cancelled_by_client)
        return final

    def _error_of(self, exc: BaseException) -> dict[str, Any]:
        try:
            return self._backend.error_object(exc)
        except Exception:  # a broken mapper must not take the socket down
            return error_object("internal error", "server_error")

    @staticmethod
    def _error(gen_id: JobKey | None, error: dict[str, Any]) -> bytes:
        return orjson.dumps({"type": "error", "id": gen_id, "error": error})

    async def _send_error(self, gen_id: JobKey | None, error: dict[str, Any]) -> None:
        await self.send_bytes(self._error(gen_id, error))


def frame(key: bytes, record: Record) -> bytes:
    """A record as this protocol's message; `key` is the JSON of the generation's id."""
    seq = b"" if record.seq is None else b',"seq":%d' % record.seq
    if record.kind is RecordKind.EVENT:
        return b'{"type":"chunk","id":' + key + seq + b',"chunk":' + record.payload + b"}"
    if record.kind is RecordKind.ERROR:
        return b'{"type":"error","id":' + key + seq + b',"error":' + record.payload + b"}"
    return merge_object(b'{"type":"done","id":' + key + seq, record.payload)


def merge_object(head: bytes, payload: bytes) -> bytes:
    """`head` (an unfinished JSON object) followed by the members of the object `payload`."""
    if payload in (b"{}", b"null"):
        return head + b"}"
    assert payload.startswith(b"{")
    return head + b"," + payload[1:]
