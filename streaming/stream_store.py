"""StreamStore: the resumable streams of a server, their bounds, expiry and eviction.

`start` hands a generation's `RecordSource` to a task of the store's own nursery, which writes
its records into a `ResumableStream` whatever happens to the connection that asked for it; the
caller reads through a `StreamReader` like any later reader. The owning task's life:

1. produce: append each record. A client that goes away only detaches its reader; once no
   reader has been attached for the stream's window, the deadline cancels this phase and the
   generation is aborted (its KV blocks go back to the pool), ending the log with the
   protocol's "stopped" records. `cancel` (a client's stop) does the same at once.
2. keep: a finished stream stays readable for its window after its last reader left, so a
   client that lost the last bytes can still fetch them; then it is removed.

Memory is bounded twice: a stream that would pass `max_stream_bytes` is stopped ("overflow"),
and when all streams together pass `max_total_bytes` the oldest stream is evicted (stopped and
its log dropped at once): finished streams nobody reads first, then running ones nobody reads,
then the rest. Never the server's memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from triode.streaming.records import RecordSource
from triode.streaming.resumable import ResumableStream, StreamGoneError, StreamReader

logger = logging.getLogger(__name__)

# Why a stream was stopped before its generation finished.
CANCELLED = "cancelled"
EXPIRED = "expired"
EVICTED = "evicted"
OVERFLOW = "overflow"
SHUTDOWN = "shutdown"
FAILED = "failed"

_STOP_MESSAGES = {
    CANCELLED: "the generation was cancelled",
    EXPIRED: "no client resumed this stream within its window; the generation was stopped",
    EVICTED: "the server needed the memory of this stream's buffer; the generation was stopped",
    OVERFLOW: "this stream passed its buffer limit; the generation was stopped",
    SHUTDOWN: "the server is shutting down",
    FAILED: "internal error",
}


@dataclass(slots=True)
class StreamCounters:
    """Totals since start, for /metrics."""

    num_started: int = 0
    num_resumes: int = 0  # readers that attached after the first
    num_expired: int = 0  # generations stopped for want of a reader
    num_evicted: int = 0  # streams stopped or dropped for the total bound
    num_overflowed: int = 0  # streams stopped at their own bound
    num_cancelled: int = 0


class StreamStore:
    def __init__(self, max_total_bytes: int, max_stream_bytes: int) -> None:
        self.max_total_bytes = max_total_bytes
        self.max_stream_bytes = max_stream_bytes
        self.num_bytes = 0
        self.counters = StreamCounters()
        self._streams: dict[str, ResumableStream] = {}  # in start order: oldest first
        self._aliases: dict[tuple[str | None, str], str] = {}  # (owner, alias) -> stream id
        self._nursery: trio.Nursery | None = None

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the streams' tasks until cancelled (the server's shutdown)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- starting and finding -----------------------------------------------------------------
    def start(
        self,
        stream_id: str,
        protocol: str,
        source: RecordSource,
        *,
        owner: str | None,
        window_s: float,
        alias: str | None = None,
    ) -> StreamReader:
        """Run `source` into a new stream; returns a reader attached from the first record.
        `alias` (e.g. an AI SDK chat id) finds the owner's latest stream under that name."""
        if self._nursery is None:
            raise RuntimeError("the stream store is not running")
        if stream_id in self._streams:
            raise ValueError(f"stream id {stream_id!r} is already in use")
        stream = ResumableStream(self, stream_id, protocol, owner, window_s, self.max_stream_bytes)
        stream.stopped_records = source.stopped
        self._streams[stream_id] = stream
        if alias is not None:
            self._aliases[(owner, alias)] = stream_id
        reader = StreamReader(stream)
        self.counters.num_started += 1
        self._nursery.start_soon(self._own, stream, source, alias)
        return reader

    def get(self, stream_id: str, owner: str | None) -> ResumableStream | None:
        """The stream, if it is held and `owner` may read it."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.owner != owner:
            return None  # NOTE: another key's stream is "not found": ids do not leak
        return stream

    def get_alias(self, alias: str, owner: str | None) -> ResumableStream | None:
        stream_id = self._aliases.get((owner, alias))
        return None if stream_id is None else self.get(stream_id, owner)

    def resume(self, stream: ResumableStream, after: int) -> StreamReader:
        """A new reader of a held stream (raises StreamGoneError for a bad `after`)."""
        if stream.is_removed:
            raise StreamGoneError("the stream is no longer held")
        reader = StreamReader(stream, after)
        self.counters.num_resumes += 1
        return reader

    def cancel(self, stream: ResumableStream) -> None:
        """Stop the generation now (a client's stop); readers get the stopped records."""
        self._stop(stream, CANCELLED)

    # ---- bounds -------------------------------------------------------------------------------
    def grew(self, stream: ResumableStream, num_bytes: int, *, may_evict: bool = True) -> None:
        """Account for `num_bytes` more in `stream`; evict the oldest streams while over the
        total bound."""
        self.num_bytes += num_bytes
        if not may_evict:
            return
        while self.num_bytes > self.max_total_bytes:
            victim = self._eviction_candidate()
            if victim is None:
                return
            self._evict(victim)

    def _eviction_candidate(self) -> ResumableStream | None:
        held = [s for s in self._streams.values() if s.num_bytes > 0]
        for is_wanted in (
            lambda s: s.is_finished and not s.num_readers,
            lambda s: not s.num_readers,
            lambda s: True,
        ):
            for stream in held:  # oldest first
                if is_wanted(stream):
                    return stream
        return None

    def _evict(self, stream: ResumableStream) -> None:
        logger.info("evicting resumable stream %s (buffers over the total bound)", stream.stream_id)
        self.counters.num_evicted += 1
        self._stop(stream, EVICTED)
        # The memory goes now, not when its task ends.
        self.num_bytes -= stream.clear_nowait(
            stream.stopped_records(EVICTED, _STOP_MESSAGES[EVICTED])
        )
        self._unindex(stream)

    def _stop(self, stream: ResumableStream, reason: str) -> None:
        if stream.stop_reason is None and not stream.is_finished:
            stream.stop_reason = reason
            if reason == CANCELLED:
                self.counters.num_cancelled += 1
        stream.cancel_nowait()

    def _unindex(self, stream: ResumableStream) -> None:
        """No new reader can find the stream; its owning task ends after the produce phase."""
        stream.is_removed = True
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        for key, stream_id in list(self._aliases.items()):
            if stream_id == stream.stream_id:
                del self._aliases[key]

    # ---- the owning task ----------------------------------------------------------------------
    async def _own(self, stream: ResumableStream, source: RecordSource, alias: str | None) -> None:
        try:
            await self._produce(stream, source)
            if not stream.is_removed:
                with trio.CancelScope() as keep:
                    stream.govern(keep)
                    await trio.sleep_forever()
        finally:
            self._unindex(stream)
            # NOTE: only the accounting: readers still attached keep the log (and its end).
            self.num_bytes -= stream.num_bytes
            stream.num_bytes = 0

    async def _produce(self, stream: ResumableStream, source: RecordSource) -> None:
        with trio.CancelScope() as produce:
            stream.govern(produce)
            try:
                async for record in source:
                    if stream.is_removed:
                        break
                    if record.is_terminal:  # always kept: readers must learn how it ended
                        stream.finish_nowait([record])
                        break
                    if not stream.append_nowait(record):
                        stream.stop_reason = stream.stop_reason or OVERFLOW
                        self.counters.num_overflowed += 1
                        break
            except Exception:  # a bug in the source: end the stream, keep the server
                logger.exception("a resumable stream's source failed")
                stream.stop_reason = stream.stop_reason or FAILED
            finally:
                with trio.CancelScope(shield=True):
                    await source.aclose()  # aborts an unfinished generation
        if produce.cancelled_caught and stream.stop_reason is None:
            stream.stop_reason = EXPIRED  # only the deadline cancels without a reason
            self.counters.num_expired += 1
        if not stream.is_finished:
            reason = stream.stop_reason or SHUTDOWN
            stream.finish_nowait(source.stopped(reason, _STOP_MESSAGES[reason]))
