"""StepProfile: where serving time goes, per step, measured inside the server.

The actor adds one record per engine step: its wall time, the model forward's share of it,
the tokens it computed, and (for a step run in a thread of the server's own process) how long
the step thread was neither running nor waiting for a core: with no I/O in a step, that is
time spent waiting for the GIL while the event loop's Python ran. A trio instrument adds the
event loop's busy time (everything between two waits for I/O). The server logs `summary()`
when it stops; BENCHMARKS.md has the numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from triode.engine.llm_engine import LLMEngine
    from triode.streaming.delta import RequestDelta


@dataclass(slots=True)
class StepProfile:
    num_steps: int = 0
    num_tokens: int = 0
    step_s: float = 0.0  # wall time of the steps
    forward_s: float = 0.0  # of which the model forward (runner)
    off_cpu_s: float = 0.0  # step thread neither on a core nor runnable (GIL waits)
    run_queue_s: float = 0.0  # step thread runnable, waiting for a core
    loop_busy_s: float = 0.0  # the event loop running Python
    loop_wall_s: float = 0.0  # the event loop's lifetime so far
    num_chunks: int = 0  # deltas handed to request streams
    num_first_tokens: int = 0
    queue_s: float = 0.0  # arrival -> first scheduled, summed over requests
    ttft_s: float = 0.0  # arrival -> first token reaches the actor, summed over requests

    def add_step(
        self, step_s: float, forward_s: float, num_tokens: int, off_cpu_s: float, run_queue_s: float
    ) -> None:
        self.num_steps += 1
        self.num_tokens += num_tokens
        self.step_s += step_s
        self.forward_s += forward_s
        self.off_cpu_s += off_cpu_s
        self.run_queue_s += run_queue_s

    def add_first_token(self, queue_s: float | None, ttft_s: float) -> None:
        self.num_first_tokens += 1
        self.queue_s += queue_s or 0.0
        self.ttft_s += ttft_s

    def summary(self) -> str:
        n = max(1, self.num_steps)
        first = max(1, self.num_first_tokens)
        busy = self.loop_busy_s / self.loop_wall_s if self.loop_wall_s else 0.0
        return (
            f"{self.num_steps} steps, {self.num_tokens / n:.1f} tokens/step; per step: "
            f"{1e3 * self.step_s / n:.1f} ms wall, {1e3 * self.forward_s / n:.1f} ms forward, "
            f"{1e3 * self.off_cpu_s / n:.1f} ms step thread off-CPU (GIL), "
            f"{1e3 * self.run_queue_s / n:.1f} ms waiting for a core, "
            f"{self.num_chunks / n:.1f} deltas; event loop busy {100 * busy:.0f}% "
            f"({1e3 * self.loop_busy_s / n:.1f} ms per step); first tokens: "
            f"{self.ttft_s / first:.2f} s after arrival, of which {self.queue_s / first:.2f} s "
            "queued before the first step that computed the prompt"
        )


def thread_sched_seconds() -> tuple[float, float]:
    """(on-CPU, waiting-for-a-core) seconds of the calling thread, from the kernel's
    schedstat; (thread CPU time, 0) where that is not available."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            on_cpu, run_queue, _ = f.read().split()
        return int(on_cpu) / 1e9, int(run_queue) / 1e9
    except (OSError, ValueError):
        return time.thread_time(), 0.0


class LoopBusyInstrument(trio.abc.Instrument):
    """Adds the event loop's busy time (outside its I/O waits) to a StepProfile."""

    def __init__(self, profile: StepProfile) -> None:
        self.profile = profile
        self._start = time.perf_counter()
        self._busy_since = self._start

    def before_io_wait(self, timeout: float) -> None:
        now = time.perf_counter()
        self.profile.loop_busy_s += now - self._busy_since
        self.profile.loop_wall_s = now - self._start

    def after_io_wait(self, timeout: float) -> None:
        self._busy_since = time.perf_counter()


def timed_step(core: LLMEngine, profile: StepProfile) -> list[RequestDelta]:
    """`core.step()` in the step thread, adding its timings to `profile`."""
    timings = core.runner.timings
    forward0, tokens0 = timings.forward, timings.num_tokens
    cpu0, queue0 = thread_sched_seconds()
    t0 = time.perf_counter()
    deltas = core.step()
    wall = time.perf_counter() - t0
    cpu1, queue1 = thread_sched_seconds()
    queued = queue1 - queue0
    off_cpu = max(0.0, wall - (cpu1 - cpu0) - queued)
    profile.add_step(
        wall, timings.forward - forward0, timings.num_tokens - tokens0, off_cpu, queued
    )
    return deltas
