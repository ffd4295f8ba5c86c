"""A heartbeat that measures how long the event loop goes without running its tasks.

Every socket of the server is served by one event-loop thread, so anything slow done on it
(tokenizing a long prompt, parsing a huge body) delays every client at once. The heartbeat
sleeps a few milliseconds at a time and records, for each beat:

- `lag`: how late it woke (wall clock). What clients feel; it also includes time the loop
  waited for the GIL held by another thread, or for a CPU the OS gave to another process.
- `busy`: the CPU time the event-loop thread itself spent meanwhile, i.e. work done on the
  loop by other tasks. Unlike `lag` it does not grow when the machine is overloaded, so it is
  the reliable measure of "request processing ran on the event loop".

Stalls longer than `warn_after_s` are logged; tests read the maxima.
"""

from __future__ import annotations

import logging
import time

import trio

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, interval_s: float = 0.005, warn_after_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.warn_after_s = warn_after_s
        self.max_lag_s = 0.0
        self.max_busy_s = 0.0
        self.num_beats = 0

    def reset(self) -> None:
        self.max_lag_s = 0.0
        self.max_busy_s = 0.0
        self.num_beats = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            start, start_cpu = trio.current_time(), time.thread_time()
            await trio.sleep(self.interval_s)
            lag = trio.current_time() - start - self.interval_s
            busy = time.thread_time() - start_cpu
            self.num_beats += 1
            self.max_lag_s = max(self.max_lag_s, lag)
            self.max_busy_s = max(self.max_busy_s, busy)
            if lag > self.warn_after_s:
                logger.warning(
                    "the event loop was blocked for %.0f ms (%.0f ms of it running tasks)",
                    lag * 1000,
                    busy * 1000,
                )
