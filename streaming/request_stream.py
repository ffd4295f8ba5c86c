"""RequestStream: the per-request token channel between the engine task and a web handler.

The engine pushes with `push_nowait`, which never blocks: if the reader lags, the new delta is
merged into the one still waiting for the same sample, so the buffer holds at most one delta per
sample and a slow client can neither stall the step loop nor grow memory. The web handler
iterates the stream (`async for delta in stream`) and ends when every sample has finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from triode.streaming.delta import RequestDelta


class RequestStream:
    def __init__(self, request_id: str, num_samples: int = 1) -> None:
        self.request_id = request_id
        self.num_samples = num_samples
        self.arrival_time = time.monotonic()
        self._pending: list[RequestDelta] = []
        self._pending_by_index: dict[int, RequestDelta] = {}
        self._finished_indices: set[int] = set()
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def is_finished(self) -> bool:
        """Every sample has sent its final delta (which may still be unread)."""
        return self._closed

    def push_nowait(self, delta: RequestDelta) -> None:
        """Queue a delta for the reader; coalesces with an unread delta of the same sample."""
        if self._closed or delta.index in self._finished_indices:
            return
        waiting = self._pending_by_index.get(delta.index)
        if waiting is not None:
            waiting.merge(delta)
        else:
            self._pending.append(delta)
            self._pending_by_index[delta.index] = delta
        if delta.is_finished:
            self._pending_by_index.pop(delta.index, None)
            self._finished_indices.add(delta.index)
            if len(self._finished_indices) >= self.num_samples:
                self._closed = True
        self._lot.unpark_all()

    def finish_nowait(self, delta_factory: Callable[[int], RequestDelta]) -> None:
        """End every unfinished sample with a delta from `delta_factory(index)` (shutdown, crash)."""
        for index in range(self.num_samples):
            if index not in self._finished_indices:
                self.push_nowait(delta_factory(index))

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestDelta:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        delta = self._pending.pop(0)
        if self._pending_by_index.get(delta.index) is delta:
            del self._pending_by_index[delta.index]
        return delta
