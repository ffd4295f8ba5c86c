"""Server-sent events framing, exactly as OpenAI's streaming API uses it.

Each event is one `data: {json}` line and a blank line; the stream ends with `data: [DONE]`.
`SSEDecoder` is the client side (tests, load generators): bytes in, `data` payloads out.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE_DATA = "[DONE]"
DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


def encode_event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, useful as a keep-alive."""
    return b": " + text.encode() + b"\n\n"


class SSEDecoder:
    """Incremental parser: feed raw bytes as they arrive, get each event's `data` back.

    Handles events split across reads, CRLF line endings and multi-line data (joined with a
    newline, as the SSE spec says); comments and other fields are skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them."""
        self._buffer += chunk
        events: list[str] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return events
            line = self._buffer[:newline].rstrip(b"\r").decode()
            self._buffer = self._buffer[newline + 1 :]
            if not line:  # a blank line dispatches the event
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
