"""WebSocketSession: many concurrent generations over one socket, each tagged by a client id.

Text frames of JSON. Client to server:

    {"type": "chat.completion" | "completion", "id": ID, "request": {...HTTP body...}}
    {"type": "cancel", "id": ID}

Server to client:

    {"type": "chunk", "id": ID, "chunk": {...the SSE chunk object...}}
    {"type": "done", "id": ID, "usage": {...}}              (+ "cancelled": true after a cancel)
    {"type": "error", "id": ID | null, "error": {"message", "type", "param", "code"}}

Every accepted generation ends with exactly one `done` or `error` carrying its id, and its id is
free for reuse once that message is sent. An `error` with `"id": null` is about a message that
started nothing: unreadable JSON, an unknown type, a missing or malformed id, or an id already
in use (the running generation is unaffected). Cancelling an unknown or finished id is a no-op.
Closing the socket cancels every generation on it. The session only knows the envelope: what a
generation is comes from the `GenerationBackend` the web layer passes in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import trio

from triode.streaming.ws_limits import WebSocketLimits

logger = logging.getLogger(__name__)

GENERATION_KINDS = ("chat.completion", "completion")
MAX_ID_LENGTH = 256


class Generation(Protocol):
    """A started generation: an async iterator of chunk objects."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    @property
    def usage(self) -> dict[str, Any] | None: ...

    async def aclose(self) -> None:
        """Abort the generation if it has not finished; idempotent and safe when cancelled."""


class GenerationBackend(Protocol):
    async def start(self, kind: str, request: dict[str, Any]) -> Generation:
        """Validate and submit a request; raise to refuse it."""

    def error_object(self, exc: BaseException) -> dict[str, Any]:
        """The OpenAI error object for an exception raised by `start` or by iteration."""


class Transport(Protocol):
    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes: ...


def error_object(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


@dataclass(slots=True)
class _Running:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    is_cancelled_by_client: bool = False


class WebSocketSession:
    """Serves one socket until it closes (or, when draining, until its generations end)."""

    def __init__(
        self,
        transport: Transport,
        backend: GenerationBackend,
        limits: WebSocketLimits | None = None,
        kinds: tuple[str, ...] = GENERATION_KINDS,
    ) -> None:
        self._transport = transport
        self._backend = backend
        self._limits = limits or WebSocketLimits()
        self._kinds = kinds
        self._running: dict[str | int, _Running] = {}
        self._send_lock = trio.Lock()
        self._draining = trio.Event()  # replaced by the caller's in `run`
        self._drained = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def num_running(self) -> int:
        return len(self._running)

    async def run(self, draining: trio.Event | None = None) -> None:
        """Read messages and run generations; returns when the peer goes away or, once
        `draining` is set, when no generation is left (new ones are refused meanwhile)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._read_loop, nursery.cancel_scope)
            if draining is not None:
                self._draining = draining
                await draining.wait()
                if not self._running:
                    self._drained.set()
                await self._drained.wait()
                nursery.cancel_scope.cancel()

    # ---- incoming -----------------------------------------------------------------------------
    async def _read_loop(self, session_scope: trio.CancelScope) -> None:
        try:
            while True:
                try:
                    raw = await self._transport.receive()
                except Exception as exc:  # the peer went away or the socket broke
                    logger.debug("websocket receive ended: %r", exc)
                    return
                try:
                    await self._handle(raw)
                except Exception:  # a bug handling one message must not take the socket down
                    logger.exception("could not handle a websocket message")
                    await self._send_error(None, error_object("internal error", "server_error"))
        finally:
            # Nothing more can arrive: stop every generation (their cleanup aborts them).
            session_scope.cancel()

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._send_error(None, error_object(f"the message is not valid JSON: {exc}"))
            return
        if not isinstance(message, dict):
            await self._send_error(None, error_object("a message must be a JSON object"))
            return
        kind = message.get("type")
        if kind == "cancel":
            self._cancel(message.get("id"))
        elif kind in self._kinds:
            await self._start(kind, message)
        else:
            allowed = ", ".join(repr(k) for k in (*self._kinds, "cancel"))
            await self._send_error(
                None,
                error_object(
                    f"unknown message type {kind!r}; expected one of {allowed}", param="type"
                ),
            )

    def _cancel(self, gen_id: Any) -> None:
        running = self._running.get(gen_id) if _is_valid_id(gen_id) else None
        if running is not None:  # unknown or finished ids are ignored: the race is normal
            running.is_cancelled_by_client = True
            running.scope.cancel()

    async def _start(self, kind: str, message: dict[str, Any]) -> None:
        gen_id = message.get("id")
        if not _is_valid_id(gen_id):
            await self._send_error(
                None,
                error_object(
                    f"id must be a non-empty string (at most {MAX_ID_LENGTH} characters) or an "
                    f"integer, got {gen_id!r}",
                    param="id",
                ),
            )
            return
        if gen_id in self._running:
            await self._send_error(
                None,
                error_object(
                    f"id {gen_id!r} is already in use by a running generation",
                    param="id",
                    code="duplicate_id",
                ),
            )
            return
        request = message.get("request")
        refusal: dict[str, Any] | None = None
        if not isinstance(request, dict):
            refusal = error_object("request must be a JSON object (the HTTP body)", param="request")
        elif self._draining.is_set():
            refusal = error_object(
                "the server is shutting down", "server_error", code="server_shutting_down"
            )
        elif len(self._running) >= self._limits.max_generations_per_socket > 0:
            refusal = error_object(
                f"too many concurrent generations on this socket (limit "
                f"{self._limits.max_generations_per_socket})",
                "rate_limit_error",
                code="too_many_generations",
            )
        elif not self._limits.can_start_generation():
            refusal = error_object(
                "the server is busy (WebSocket generation limit reached); retry later",
                "server_error",
                code="server_overloaded",
            )
        if refusal is not None:
            await self._send_error(gen_id, refusal)
            return
        assert isinstance(request, dict) and self._nursery is not None
        running = _Running()
        self._running[gen_id] = running
        self._limits.start_generation()
        self._nursery.start_soon(self._run_generation, gen_id, kind, request, running)

    # ---- one generation -----------------------------------------------------------------------
    async def _run_generation(
        self, gen_id: str | int, kind: str, request: dict[str, Any], running: _Running
    ) -> None:
        generation: Generation | None = None
        final: dict[str, Any] | None = None
        try:
            try:
                with running.scope:
                    try:
                        generation = await self._backend.start(kind, request)
                        async for chunk in generation:
                            await self._send({"type": "chunk", "id": gen_id, "chunk": chunk})
                        final = {"type": "done", "id": gen_id, "usage": generation.usage}
                    except Exception as exc:
                        final = {"type": "error", "id": gen_id, "error": self._error_of(exc)}
                if running.scope.cancelled_caught and running.is_cancelled_by_client:
                    usage = generation.usage if generation is not None else None
                    final = {"type": "done", "id": gen_id, "usage": usage, "cancelled": True}
            finally:
                if generation is not None:
                    await generation.aclose()  # aborts an unfinished request; shielded inside
                # Free the id before the final message, so the client may reuse it at once.
                del self._running[gen_id]
                self._limits.end_generation()
            if final is not None:
                await self._send(final)
        finally:
            # Only after the final message: a drained session closes the socket.
            if self._draining.is_set() and not self._running:
                self._drained.set()

    def _error_of(self, exc: BaseException) -> dict[str, Any]:
        try:
            return self._backend.error_object(exc)
        except Exception:  # a broken mapper must not take the socket down
            logger.exception("could not describe an error")
            return error_object("internal error", "server_error")

    # ---- outgoing -----------------------------------------------------------------------------
    async def _send_error(self, gen_id: str | int | None, error: dict[str, Any]) -> None:
        await self._send({"type": "error", "id": gen_id, "error": error})

    async def _send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message).decode()
        async with self._send_lock:  # one frame at a time, in order
            try:
                await self._transport.send(data)
            except Exception as exc:  # the socket broke: nobody is left to talk to
                logger.debug("websocket send failed: %r", exc)
                if self._nursery is not None:
                    self._nursery.cancel_scope.cancel()


def _is_valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
