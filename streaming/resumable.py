"""ResumableStream: one generation's records as a numbered log that outlives its connections.

Records are numbered from 0 in the order they were produced (the sequence number a client
resumes after: SSE `id:` lines, `seq` on the WebSocket). Any number of readers follow the log at
once, each from its own position and then live, so a reconnecting client replays exactly what it
missed and two tabs both get every record. The log is only ever cleared as a whole (when the
stream is evicted); readers left behind then skip to the terminal record that says why.

Expiry is a trio deadline: while no reader is attached, the task that owns the stream (see
stream_store.py) runs under a cancel scope whose deadline is `window_s` after the last reader
left; attaching a reader lifts it. So a stream nobody comes back for is stopped by trio itself,
with no polling.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio

from triode.streaming.records import Record

if TYPE_CHECKING:
    from triode.streaming.stream_store import StreamStore

# What a record costs beyond its payload (the Record object, its list slot, the bytes header).
RECORD_OVERHEAD_BYTES = 120


class StreamGoneError(Exception):
    """The records a reader asked for are no longer (or never were) in the log."""


class ResumableStream:
    def __init__(
        self,
        store: StreamStore,
        stream_id: str,
        protocol: str,
        owner: str | None,
        window_s: float,
        max_bytes: int,
    ) -> None:
        self.stream_id = stream_id
        self.protocol = protocol  # how readers frame the records (see web/stream_framing.py)
        self.owner = owner  # who may read or cancel it (an API key's digest; None: anyone)
        self.window_s = window_s
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self.num_readers = 0
        self.stop_reason: str | None = None  # why it was stopped early, if it was
        # The records that end it when stopped early (its source's `stopped`).
        self.stopped_records: Callable[[str, str], list[Record]] = lambda reason, message: []
        self.is_removed = False
        self._store = store
        self._records: list[Record] = []
        self._first_seq = 0  # the seq of _records[0]
        self._is_finished = False  # the terminal record is in the log
        self._lot = trio.lowlevel.ParkingLot()
        self._scope: trio.CancelScope | None = None
        self._is_cancel_pending = False
        self._detached_at = trio.current_time()

    # ---- state --------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self._records)

    @property
    def is_finished(self) -> bool:
        return self._is_finished

    # ---- writing (the owning task) ------------------------------------------------------------
    def append_nowait(self, record: Record) -> bool:
        """Add an event or the terminal record; False (and nothing added) when it would take
        the stream over its own byte bound. The store may evict other streams to make room."""
        assert not self._is_finished, "a finished stream takes no more records"
        size = len(record.payload) + RECORD_OVERHEAD_BYTES
        if self.num_bytes + size > self.max_bytes:
            return False
        self._add(record, size)
        self._store.grew(self, size)
        return True

    def finish_nowait(self, records: list[Record]) -> None:
        """End the log with these records (the last is terminal), whatever the bounds: they
        are small, and readers must learn how the stream ended."""
        if self._is_finished:
            return
        for record in records:
            size = len(record.payload) + RECORD_OVERHEAD_BYTES
            self._add(record, size)
            self._store.grew(self, size, may_evict=False)
        assert self._is_finished, "the last record must be terminal"

    def _add(self, record: Record, size: int) -> None:
        self._records.append(record.at(self.next_seq))
        self.num_bytes += size
        if record.is_terminal:
            self._is_finished = True
        self._lot.unpark_all()

    def clear_nowait(self, ending: list[Record]) -> int:
        """Drop every record (eviction); returns the bytes freed. Readers skip ahead to what
        follows: the records `ending` the log, added here when the stream had finished (a
        reader behind must learn it lost records, never see a normal end after a gap), or
        else by its owning task once the generation stops."""
        freed = self.num_bytes
        self._first_seq = self.next_seq
        self._records = []
        self.num_bytes = 0
        if self._is_finished:
            for record in ending:
                self._records.append(record.at(self.next_seq))
                self.num_bytes += len(record.payload) + RECORD_OVERHEAD_BYTES
        self._lot.unpark_all()
        return freed - self.num_bytes

    # ---- expiry ---------------------------------------------------------------------------
    def govern(self, scope: trio.CancelScope) -> None:
        """Make `scope` the one the stream's expiry applies to (the owning task's current
        phase)."""
        self._scope = scope
        self._apply_deadline()
        if self._is_cancel_pending:
            self._is_cancel_pending = False
            scope.cancel()

    def cancel_nowait(self) -> None:
        """Cancel the owning task's current phase (at once, or as soon as it starts)."""
        if self._scope is None:
            self._is_cancel_pending = True
        else:
            self._scope.cancel()

    def attach(self) -> None:
        self.num_readers += 1
        self._apply_deadline()

    def detach(self) -> None:
        self.num_readers -= 1
        assert self.num_readers >= 0
        if self.num_readers == 0:
            self._detached_at = trio.current_time()
        self._apply_deadline()

    def _apply_deadline(self) -> None:
        if self._scope is not None:
            self._scope.deadline = (
                math.inf if self.num_readers else self._detached_at + self.window_s
            )

    # ---- reading --------------------------------------------------------------------------
    def check_after(self, after: int) -> None:
        """Raise StreamGoneError unless a reader may start after `after`."""
        if after < -1 or after >= self.next_seq:
            raise StreamGoneError(
                f"sequence number {after} is not in this stream (it has records 0 to "
                f"{self.next_seq - 1})"
            )

    async def follow(self, after: int) -> AsyncIterator[Record]:
        """The records numbered above `after`, then live ones, up to the terminal record."""
        seq = after + 1
        while True:
            if seq < self._first_seq:  # cleared under us: skip to what says why
                seq = self._first_seq
            index = seq - self._first_seq
            if index < len(self._records):
                record = self._records[index]
                seq += 1
                yield record
                if record.is_terminal:
                    return
                continue
            if self._is_finished:
                return
            await self._lot.park()


class StreamReader:
    """One reader of a stream: attached from creation until `close` (idempotent)."""

    def __init__(self, stream: ResumableStream, after: int = -1) -> None:
        stream.check_after(after)
        self.stream = stream
        self.after = after
        self._is_closed = False
        stream.attach()

    def __aiter__(self) -> AsyncIterator[Record]:
        return self.stream.follow(self.after)

    def close(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self.stream.detach()

    async def aclose(self) -> None:
        self.close()
