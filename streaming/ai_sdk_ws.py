"""AiSdkChatSession: the Vercel AI SDK's `WebSocketChatTransport` protocol on one socket.

Client to server (JSON text frames):

    {"type": "send", "requestId": R, "id": CHAT_ID, "trigger": ..., "messageId": ...,
     "messages": [UIMessage...], "headers": {...}, "body": {...}, "metadata": ...}
    {"type": "resume", "requestId": R, "id": CHAT_ID, "lastSequence": N | undefined, ...}
    {"type": "abort", "requestId": R}

Server to client:

    {"type": "start", "requestId": R}
    {"type": "chunk", "requestId": R, "sequence": N, "chunk": {UI message chunk}}
    {"type": "end", "requestId": R}
    {"type": "error", "requestId": R, "errorText": "..."}
    {"type": "no-active", "requestId": R}          (a resume that found no stream)

Sequences count each request's chunks from 0. A resume replays the chat's latest stream from
its start (the transport's `resumeStreamIsReplay`), or from after `lastSequence` when given.
`abort` stops the generation for every reader and sends nothing more for R (the client has
already let go of it). Closing the socket stops its plain generations; resumable ones keep
running for their window. A frame that cannot be understood gets an `error` with the
requestId it carried ("" when none); the socket stays open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from triode.streaming.records import RecordKind
from triode.streaming.ws_mux import Running, WebSocketMux, is_valid_key
from triode.streaming.ws_session import Generation


class AiSdkBackend(Protocol):
    async def start(self, body: dict[str, Any]) -> Generation:
        """Start a chat turn from the HTTP-equivalent body (`id`, `messages`, ...); raise to
        refuse it."""

    async def resume(self, chat_id: str, after: int) -> Generation | None:
        """Follow the chat's latest held stream from after `after`; None if there is none."""

    def error_text(self, exc: BaseException) -> str:
        """What to tell the client about an exception from `start`, `resume` or iteration."""


class AiSdkChatSession(WebSocketMux):
    def __init__(self, transport: Any, backend: AiSdkBackend, limits: Any = None) -> None:
        super().__init__(transport, limits)
        self._backend = backend

    async def on_bad_message(self, error: dict[str, Any]) -> None:
        await self._send_error("", error["message"])

    async def on_message(self, message: dict[str, Any]) -> None:
        kind, request_id = message.get("type"), message.get("requestId")
        if not isinstance(request_id, str) or not is_valid_key(request_id):
            await self._send_error("", "requestId must be a non-empty string of at most 256")
            return
        if kind == "abort":
            self.cancel(request_id)
            return
        if kind not in ("send", "resume"):
            await self._send_error(request_id, f"unknown frame type {kind!r}")
            return
        if self.is_running(request_id):
            await self._send_error(request_id, f"requestId {request_id!r} is already in use")
            return
        refusal = self.refusal()
        chat_id, body = message.get("id"), message.get("body", {})
        if refusal is None and (not isinstance(chat_id, str) or not chat_id):
            refusal = {"message": "id must be the chat's id (a non-empty string)"}
        if refusal is None and not isinstance(body, dict):
            refusal = {"message": "body must be a JSON object"}
        if refusal is not None:
            await self._send_error(request_id, refusal["message"])
            return
        assert isinstance(chat_id, str) and isinstance(body, dict)
        if kind == "send":
            request = {
                **body,
                "id": chat_id,
                "messages": message.get("messages"),
                "trigger": message.get("trigger", "submit-message"),
                "messageId": message.get("messageId"),
            }
            self._spawn(request_id, lambda: self._backend.start(request))
            return
        after = message.get("lastSequence")
        if after is None:
            after = -1
        if isinstance(after, bool) or not isinstance(after, int) or after < -1:
            await self._send_error(request_id, "lastSequence must be an integer >= 0")
            return
        self._spawn(request_id, lambda: self._backend.resume(chat_id, after))

    def _spawn(self, request_id: str, open_: Callable[[], Awaitable[Generation | None]]) -> None:
        async def job(running: Running) -> bytes | None:
            return await self._run(request_id, open_, running)

        self.spawn(request_id, job)

    async def _run(
        self,
        request_id: str,
        open_: Callable[[], Awaitable[Generation | None]],
        running: Running,
    ) -> bytes | None:
        generation: Generation | None = None
        final: bytes | None = None
        key = orjson.dumps(request_id)
        try:
            with running.scope:
                try:
                    generation = await open_()
                    if generation is None:
                        return _frame("no-active", key)
                    await self.send_bytes(_frame("start", key))
                    sequence = 0  # a resumed stream's records carry their own
                    async for record in generation:
                        if record.kind is RecordKind.EVENT:
                            sequence = sequence if record.seq is None else record.seq
                            await self.send_bytes(
                                _frame("chunk", key, b',"sequence":%d' % sequence, record.payload)
                            )
                            sequence += 1
                        elif record.kind is RecordKind.END:
                            break
                        else:
                            message = orjson.loads(record.payload).get("message", "error")
                            final = self._error(key, message)
                            break
                    if final is None:
                        final = _frame("end", key)
                except Exception as exc:
                    final = self._error(key, self._error_text(exc))
            if running.is_cancelled_by_client:
                final = None  # the client let go of this request when it sent abort
        finally:
            if generation is not None:  # aborts or detaches; shielded inside
                await generation.aclose(cancelled=running.is_cancelled_by_client)
        return final

    def _error_text(self, exc: BaseException) -> str:
        try:
            return self._backend.error_text(exc)
        except Exception:  # a broken mapper must not take the socket down
            return "internal error"

    @staticmethod
    def _error(key: bytes, text: str) -> bytes:
        return b'{"type":"error","requestId":' + key + b',"errorText":' + orjson.dumps(text) + b"}"

    async def _send_error(self, request_id: str, text: str) -> None:
        await self.send_bytes(self._error(orjson.dumps(request_id), text))


def _frame(kind: str, key: bytes, extra: bytes = b"", chunk: bytes | None = None) -> bytes:
    head = b'{"type":"' + kind.encode() + b'","requestId":' + key + extra
    return head + (b"}" if chunk is None else b',"chunk":' + chunk + b"}")
