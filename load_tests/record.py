"""What one request measured (RequestRecord) and the recorder both transports feed.

Times are `time.perf_counter()` seconds. A record keeps its start as an offset from the run's
start, and every other time as an offset from its own start, so a JSON result can be re-plotted
and compared without the original clock.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import trio

# Error kinds (besides `http_<status>`): what went wrong, in words a summary can group by.
CONNECT = "connect"  # the TCP connection or WebSocket handshake failed
TIMEOUT = "timeout"  # the request ran past the per-request timeout
CONNECTION_LOST = "connection_lost"  # the server closed the connection before the end
MID_STREAM = "mid_stream"  # an error object arrived after the first token
REJECTED = "rejected"  # a WebSocket error message before the first token (the request refused)
PROTOCOL = "protocol"  # something that is not the streaming protocol arrived


class Abandoned(Exception):
    """Raised from `on_chunk` to make the transport drop the connection mid-stream."""


@dataclass(slots=True)
class ReadBehaviour:
    """How a client reads: normally, or dropping or pausing after some content chunks."""

    disconnect_after: int | None = None  # close the connection after this many chunks
    disconnect_after_s: float | None = None  # ... or this long after sending (maybe queued)
    pause_after: int | None = None  # stop reading for `pause_s` after this many chunks
    pause_s: float = 0.0


@dataclass(slots=True)
class RequestRecord:
    """One request's measurements; `error` is None for a request that completed."""

    index: int
    transport: str
    start: float  # seconds from the run's start to sending the request
    chunk_times: list[float] = field(default_factory=list)  # content chunks, from `start`
    e2e: float | None = None  # from `start` to the end marker ([DONE] / done)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    is_usage_reported: bool = False  # output_tokens from the server's usage, not counted
    error: str | None = None
    error_detail: str | None = None
    is_abandoned: bool = False  # the client left on purpose (soak); neither ok nor an error
    # Seconds to open this request's connection (SSE: the TCP connect; WebSocket: TCP and the
    # upgrade handshake); None when it reused an open one.
    connect_s: float | None = None

    @property
    def is_ok(self) -> bool:
        return self.error is None and not self.is_abandoned and self.e2e is not None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content chunks (one per chunk, however many tokens)."""
        times = self.chunk_times
        return [b - a for a, b in itertools.pairwise(times)]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "transport": self.transport,
            "start": round(self.start, 6),
            "chunk_times": [round(t, 6) for t in self.chunk_times],
            "e2e": None if self.e2e is None else round(self.e2e, 6),
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "is_usage_reported": self.is_usage_reported,
            "error": self.error,
            "error_detail": self.error_detail,
            "is_abandoned": self.is_abandoned,
            "connect_s": None if self.connect_s is None else round(self.connect_s, 6),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


def has_content(chunk: dict[str, Any]) -> bool:
    """Whether an OpenAI chunk carries generated text (a role-only first chunk does not)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            return True
    return False


class RequestRecorder:
    """Fed by a transport while one request streams; `record` holds the result."""

    def __init__(
        self, index: int, transport: str, run_start: float, behaviour: ReadBehaviour | None = None
    ) -> None:
        self._t0 = time.perf_counter()
        self._behaviour = behaviour or ReadBehaviour()
        self.record = RequestRecord(index, transport, self._t0 - run_start)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    async def on_chunk(self, chunk: dict[str, Any]) -> None:
        """A chunk arrived; may pause (slow reader) or raise Abandoned (disconnect)."""
        if not has_content(chunk):
            return
        self.record.chunk_times.append(self.elapsed())
        num_chunks = len(self.record.chunk_times)
        behaviour = self._behaviour
        if behaviour.pause_after is not None and num_chunks == behaviour.pause_after:
            await trio.sleep(behaviour.pause_s)  # NOTE: not reading is the point here
        if behaviour.disconnect_after is not None and num_chunks >= behaviour.disconnect_after:
            self.abandon()
            raise Abandoned

    def abandon(self) -> None:
        if self.record.error is None:  # a request that already failed stays failed
            self.record.is_abandoned = True

    def on_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        if usage.get("completion_tokens") is not None:
            self.record.output_tokens = int(usage["completion_tokens"])
            self.record.is_usage_reported = True
        if usage.get("prompt_tokens") is not None:
            self.record.prompt_tokens = int(usage["prompt_tokens"])

    def finish(self) -> None:
        """The end marker arrived."""
        if self.record.e2e is None:
            self.record.e2e = self.elapsed()
        if not self.record.is_usage_reported:
            self.record.output_tokens = len(self.record.chunk_times)

    def fail(self, kind: str, detail: str = "") -> None:
        """Keep the first failure: later ones are usually its consequences."""
        if self.record.error is None and not self.record.is_abandoned:
            self.record.error = kind
            self.record.error_detail = detail[:300] or None

    @property
    def is_failed(self) -> bool:
        return self.record.error is not None
