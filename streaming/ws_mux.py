"""WebSocketMux: what every multiplexed WebSocket protocol here shares.

One socket carries many concurrent jobs (generations, resumed streams), each under a key the
client chose and in a task of the socket's nursery with its own cancel scope. The mux owns the
read loop, the limits (per socket and server-wide), ordered sends, cancellation by key, and
draining; a protocol (ws_session.py for /v1/ws, and the AI SDK and Responses sockets in web/)
says what messages mean and how records are framed.

A job is an async function returning its final message (or None); the mux frees the job's key
before sending that message, so a client may reuse the key as soon as it sees it. Closing the
socket cancels every job, whose cleanup decides whether its generation ends too (a plain one
is aborted, a resumable one only loses a reader).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import trio

from triode.streaming.ws_limits import WebSocketLimits

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
JobKey = str | int


class Transport(Protocol):
    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes: ...


def error_object(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


def is_valid_key(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


@dataclass(slots=True)
class Running:
    """A job in flight: its scope, and whether the client asked for it to stop."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    is_cancelled_by_client: bool = False


Job = Callable[[Running], Awaitable[bytes | None]]


class WebSocketMux:
    """Serves one socket until it closes (or, when draining, until its jobs end)."""

    def __init__(self, transport: Transport, limits: WebSocketLimits | None = None) -> None:
        self._transport = transport
        self._limits = limits or WebSocketLimits()
        self._running: dict[JobKey, Running] = {}
        self._send_lock = trio.Lock()
        self._draining = trio.Event()  # replaced by the caller's in `run`
        self._drained = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def num_running(self) -> int:
        return len(self._running)

    def is_running(self, key: JobKey) -> bool:
        return key in self._running

    async def run(self, draining: trio.Event | None = None) -> None:
        """Read messages and run jobs; returns when the peer goes away or, once `draining` is
        set, when no job is left (new ones are refused meanwhile)."""
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

    # ---- what a protocol implements ---------------------------------------------------------
    async def on_message(self, message: dict[str, Any]) -> None:
        """Handle one client message (a JSON object)."""
        raise NotImplementedError

    async def on_bad_message(self, error: dict[str, Any]) -> None:
        """Tell the client a message was unreadable (not JSON, not an object)."""
        raise NotImplementedError

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
                    await self.on_bad_message(error_object("internal error", "server_error"))
        finally:
            # Nothing more can arrive: stop every job (their cleanup decides what that means).
            session_scope.cancel()

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self.on_bad_message(error_object(f"the message is not valid JSON: {exc}"))
            return
        if not isinstance(message, dict):
            await self.on_bad_message(error_object("a message must be a JSON object"))
            return
        await self.on_message(message)

    # ---- jobs ---------------------------------------------------------------------------------
    def refusal(self) -> dict[str, Any] | None:
        """Why a new job cannot start now (an error object), or None."""
        if self._draining.is_set():
            return error_object(
                "the server is shutting down", "server_error", code="server_shutting_down"
            )
        if len(self._running) >= self._limits.max_generations_per_socket > 0:
            return error_object(
                f"too many concurrent generations on this socket (limit "
                f"{self._limits.max_generations_per_socket})",
                "rate_limit_error",
                code="too_many_generations",
            )
        if not self._limits.can_start_generation():
            return error_object(
                "the server is busy (WebSocket generation limit reached); retry later",
                "server_error",
                code="server_overloaded",
            )
        return None

    def spawn(self, key: JobKey, job: Job) -> None:
        """Run `job` under `key` (the caller checked `is_running` and `refusal`)."""
        assert key not in self._running and self._nursery is not None
        running = Running()
        self._running[key] = running
        self._limits.start_generation()
        self._nursery.start_soon(self._run_job, key, job, running)

    def cancel(self, key: Any) -> bool:
        """Stop a job at the client's request; False for unknown or finished keys."""
        running = self._running.get(key) if is_valid_key(key) else None
        if running is None:
            return False
        running.is_cancelled_by_client = True
        running.scope.cancel()
        return True

    async def _run_job(self, key: JobKey, job: Job, running: Running) -> None:
        final: bytes | None = None
        try:
            try:
                final = await job(running)
            finally:
                # Free the key before the final message, so the client may reuse it at once.
                del self._running[key]
                self._limits.end_generation()
            if final is not None:
                await self.send_bytes(final)
        finally:
            # Only after the final message: a drained session closes the socket.
            if self._draining.is_set() and not self._running:
                self._drained.set()

    # ---- outgoing -----------------------------------------------------------------------------
    async def send_json(self, message: Any) -> None:
        await self.send_bytes(orjson.dumps(message))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:  # one frame at a time, in order
            try:
                await self._transport.send(data.decode())
            except Exception as exc:  # the socket broke: nobody is left to talk to
                logger.debug("websocket send failed: %r", exc)
                if self._nursery is not None:
                    self._nursery.cancel_scope.cancel()
