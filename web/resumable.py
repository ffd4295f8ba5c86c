"""Resumable streams, the web side: who may resume, which requests are resumable, SSE bodies.

A streamed request is resumable when it says `"resumable": true` (or gives its own
`"resume_window_s"`), or when the server's `--resume-window-s` is above 0 and the request does
not say `"resumable": false`. Its window: the request's `resume_window_s`, else the server's
`--resume-window-s`, else 30 s; at most `--max-resume-window-s` (0 turns resumable streams
off). The stream id is the response's id (`chatcmpl-...`, `cmpl-...`, `resp_...`).

With `--api-key`, a stream belongs to the key that started it: another key finds nothing
(404, so ids do not leak across keys).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from triode.streaming.records import Record, RecordSource
from triode.streaming.resumable import ResumableStream, StreamGoneError, StreamReader
from triode.streaming.sse import DONE, encode_record
from triode.streaming.stream_store import StreamStore
from triode.web.errors import ApiError, bad_request
from triode.web.state import ServerConfig

DEFAULT_RESUME_WINDOW_S = 30.0

OPENAI = "openai"  # chat.completion.chunk / text_completion chunks, then [DONE]
UI_MESSAGE = "ui-message"  # the Vercel AI SDK's UI message stream, then [DONE]
RESPONSES = "responses"  # the Responses API's named events, no [DONE]

UI_MESSAGE_STREAM_HEADER = {"x-vercel-ai-ui-message-stream": "v1"}
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
}


@dataclass(frozen=True, slots=True)
class SseStyle:
    done: bytes  # what ends the stream
    headers: dict[str, str]


SSE_STYLES = {
    OPENAI: SseStyle(DONE, SSE_HEADERS),
    UI_MESSAGE: SseStyle(DONE, {**SSE_HEADERS, **UI_MESSAGE_STREAM_HEADER}),
    RESPONSES: SseStyle(b"", SSE_HEADERS),
}


def owner_of(api_keys: list[str], candidates: Iterable[str | None]) -> str | None:
    """The identity a stream is kept under: a digest of the configured key the client sent
    (None when the server has no keys)."""
    if not api_keys:
        return None
    for candidate in candidates:
        if candidate and any(hmac.compare_digest(candidate.encode(), k.encode()) for k in api_keys):
            return hashlib.sha256(candidate.encode()).hexdigest()
    return None


def resume_window(
    config: ServerConfig, resumable: bool | None, window_s: float | None
) -> float | None:
    """The request's window in seconds, or None for a plain stream; 400 for one out of range."""
    if resumable is False:
        return None
    if resumable is None and window_s is None and config.resume_window_s <= 0:
        return None
    if config.max_resume_window_s <= 0:
        raise bad_request(
            "resumable streams are turned off on this server (--max-resume-window-s 0)",
            "resumable",
        )
    window = window_s or config.resume_window_s or DEFAULT_RESUME_WINDOW_S
    if window > config.max_resume_window_s:
        raise bad_request(
            f"resume_window_s: at most {config.max_resume_window_s:g} seconds on this server, "
            f"got {window:g}",
            "resume_window_s",
        )
    return window


def stream_not_found(stream_id: str) -> ApiError:
    return ApiError(
        404,
        f"no resumable stream {stream_id!r}: it never existed, belongs to another key, or "
        "ended more than its window ago",
        "invalid_request_error",
        "id",
        "stream_not_found",
    )


def find_stream(store: StreamStore, stream_id: str, owner: str | None) -> ResumableStream:
    stream = store.get(stream_id, owner)
    if stream is None:
        raise stream_not_found(stream_id)
    return stream


def parse_after(last_event_id: str | None, after: str | None) -> int:
    """The sequence number to resume after: Last-Event-ID, else ?after=, else -1 (all)."""
    value, name = (last_event_id, "Last-Event-ID") if last_event_id else (after, "after")
    if value is None or value == "":
        return -1
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"{name} must be a sequence number, got {value!r}", "after") from None
    if number < -1:
        raise bad_request(f"{name} must be -1 or more, got {number}", "after")
    return number


def open_reader(store: StreamStore, stream: ResumableStream, after: int) -> StreamReader:
    try:
        return store.resume(stream, after)
    except StreamGoneError as exc:
        raise bad_request(str(exc), "after", "invalid_sequence_number") from None


async def sse_body(
    records: AsyncIterator[Record] | RecordSource | StreamReader,
    done: bytes,
    close: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE body of a stream; `close` runs however it ends (abort or detach)."""
    try:
        async for record in records:
            data = encode_record(record, done)
            if data:
                yield data
    finally:
        await close()


class StreamFollower:
    """A reader of a resumable stream, as the WebSocket session's Generation: closing it only
    detaches, unless the client cancelled (then the generation stops for every reader)."""

    def __init__(
        self,
        store: StreamStore,
        reader: StreamReader,
        usage: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self._store = store
        self._reader = reader
        self._usage = usage

    @property
    def stream(self) -> ResumableStream:
        return self._reader.stream

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage()

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._reader.__aiter__()

    async def aclose(self, cancelled: bool = False) -> None:
        self._reader.close()
        if cancelled:
            self._store.cancel(self._reader.stream)
