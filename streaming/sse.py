"""Server-sent events framing, exactly as OpenAI's streaming API uses it.

Each event is one `data: {json}` line and a blank line; the stream ends with `data: [DONE]`.
`SSEDecoder` is the client side (tests, load generators): bytes in, `data` payloads out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from triode.streaming.records import Record, RecordKind

DONE_DATA = "[DONE]"
DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


def encode_event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_record(record: Record, done: bytes = DONE) -> bytes:
    """A record as SSE: an `id:` line when it belongs to a resumable stream (its sequence
    number, which a browser's EventSource sends back as Last-Event-ID), an `event:` line when
    its protocol names events, then its data. `done` is what the protocol ends a stream with
    (`data: [DONE]` for OpenAI's and the AI SDK's, nothing for the Responses API); an error
    record becomes OpenAI's mid-stream error chunk, then `done`."""
    head = b"" if record.seq is None else b"id: %d\n" % record.seq
    if record.event is not None:
        head += b"event: " + record.event.encode() + b"\n"
    if record.kind is RecordKind.EVENT:
        return head + b"data: " + record.payload + b"\n\n"
    if record.kind is RecordKind.ERROR:
        return head + b'data: {"error":' + record.payload + b"}\n\n" + done
    return head + done if done else b""


def encode_comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, useful as a keep-alive."""
    return b": " + text.encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    id: str | None  # the last `id:` seen so far in the stream, as the spec says
    event: str | None


class SSEDecoder:
    """Incremental parser: feed raw bytes as they arrive, get each event's `data` back.

    Handles events split across reads, CRLF line endings and multi-line data (joined with a
    newline, as the SSE spec says); comments are skipped. `feed_events` also gives each event's
    `id` and `event` fields.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them."""
        return [e.data for e in self.feed_events(chunk)]

    def feed_events(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return every event completed by them."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return events
            line = self._buffer[:newline].rstrip(b"\r").decode()
            self._buffer = self._buffer[newline + 1 :]
            if not line:  # a blank line dispatches the event
                if self._data:
                    events.append(SSEEvent("\n".join(self._data), self.last_id, self._event))
                self._data = []
                self._event = None
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "id":
                self.last_id = value
            elif name == "event":
                self._event = value
