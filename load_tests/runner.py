"""Drive a workload through transports: closed loop (fixed concurrency) or open loop (Poisson).

    result = await run_workload([transport], specs, RunConfig(mode="closed", concurrency=64))

Closed loop: `concurrency` clients, each sending its next request as soon as the previous one
ends. Open loop: requests arrive at `rate` per second with exponential gaps drawn from `seed`,
whatever the server's state (optionally capped at `max_concurrency` in flight, in which case a
request waits client-side and its latencies start when it is actually sent). Waves (the soak):
`wave_size` requests start at once every `wave_interval_s` seconds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import trio
from tqdm import tqdm

from triode.load_tests.record import TIMEOUT, ReadBehaviour, RequestRecord, RequestRecorder
from triode.load_tests.stats import Summary, summarize
from triode.load_tests.workload import RequestSpec


class Transport(Protocol):
    name: str

    async def send(self, spec: RequestSpec, recorder: RequestRecorder) -> None: ...


@dataclass(frozen=True, slots=True)
class RunConfig:
    mode: Literal["closed", "open", "waves"] = "closed"
    concurrency: int = 16  # closed loop
    rate: float = 1.0  # open loop: requests per second
    max_concurrency: int = 0  # open loop: 0 = no cap
    seed: int = 0  # open loop arrivals
    wave_size: int = 100  # waves: this many requests start at once ...
    wave_interval_s: float = 1.0  # ... every this many seconds
    request_timeout_s: float = 600.0
    show_progress: bool = True
    progress_label: str = ""


@dataclass(slots=True)
class RunResult:
    records: list[RequestRecord]
    duration_s: float
    summary: Summary


def arrival_offsets(num: int, rate: float, seed: int) -> list[float]:
    """Poisson arrivals: the first at 0, then exponential gaps with mean 1/rate."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(num):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


class Progress:
    """A tqdm bar over requests, showing errors and output tokens/s so far."""

    def __init__(self, total: int | None, label: str, *, is_shown: bool) -> None:
        self._bar = tqdm(total=total, desc=label or None, unit="req", disable=not is_shown,
                         dynamic_ncols=True, mininterval=0.5)  # fmt: skip
        self.start = time.perf_counter()
        self.last_end = self.start
        self.num_errors = 0
        self.num_tokens = 0

    def add(self, record: RequestRecord) -> None:
        self.last_end = max(self.last_end, time.perf_counter())
        self.num_errors += record.error is not None
        self.num_tokens += record.output_tokens
        self._bar.update(1)
        elapsed = max(self.last_end - self.start, 1e-9)
        self._bar.set_postfix(errors=self.num_errors, tok_s=f"{self.num_tokens / elapsed:.0f}",
                              refresh=False)  # fmt: skip

    def close(self) -> None:
        self._bar.close()


async def send_one(
    transport: Transport,
    spec: RequestSpec,
    run_start: float,
    request_timeout_s: float,
    behaviour: ReadBehaviour | None = None,
) -> RequestRecord:
    """One request through `transport`, bounded by the timeout; its record."""
    recorder = RequestRecorder(spec.index, transport.name, run_start, behaviour)
    leave_after = math.inf
    if behaviour is not None and behaviour.disconnect_after_s is not None:
        leave_after = behaviour.disconnect_after_s
    with trio.move_on_after(request_timeout_s) as scope:
        with trio.move_on_after(leave_after) as leave:
            await transport.send(spec, recorder)
        if leave.cancelled_caught and not recorder.record.is_ok:
            recorder.abandon()  # the transport dropped the connection on the way out
    if scope.cancelled_caught:
        recorder.fail(TIMEOUT, f"no end after {request_timeout_s} s")
    return recorder.record


async def run_workload(
    transports: Sequence[Transport],
    specs: Sequence[RequestSpec],
    config: RunConfig,
    behaviour_of: Callable[[RequestSpec], ReadBehaviour] | None = None,
) -> RunResult:
    """Send every spec (request i over transports[i % len(transports)]); wait for all."""
    records: list[RequestRecord | None] = [None] * len(specs)
    progress = Progress(len(specs), config.progress_label, is_shown=config.show_progress)
    run_start = progress.start

    async def one(slot: int, spec: RequestSpec) -> None:
        transport = transports[slot % len(transports)]
        behaviour = behaviour_of(spec) if behaviour_of is not None else None
        record = await send_one(transport, spec, run_start, config.request_timeout_s, behaviour)
        records[slot] = record
        progress.add(record)

    try:
        async with trio.open_nursery() as nursery:
            if config.mode == "closed":
                queue = iter(enumerate(specs))

                async def client() -> None:
                    for slot, spec in queue:  # shared: each request goes to one client
                        await one(slot, spec)

                for _ in range(min(config.concurrency, len(specs))):
                    nursery.start_soon(client)
            elif config.mode == "open":
                limiter = trio.CapacityLimiter(config.max_concurrency or math.inf)

                async def capped(slot: int, spec: RequestSpec) -> None:
                    async with limiter:
                        await one(slot, spec)

                offsets = arrival_offsets(len(specs), config.rate, config.seed)
                for slot, (spec, offset) in enumerate(zip(specs, offsets)):
                    await trio.sleep_until(trio.current_time() + offset - _since(run_start))
                    nursery.start_soon(capped, slot, spec)
            elif config.mode == "waves":
                for slot, spec in enumerate(specs):
                    wave_start = (slot // config.wave_size) * config.wave_interval_s
                    await trio.sleep_until(trio.current_time() + wave_start - _since(run_start))
                    nursery.start_soon(one, slot, spec)
            else:
                raise ValueError(f"unknown mode {config.mode!r}")
    finally:
        progress.close()
    done = [r for r in records if r is not None]
    duration = progress.last_end - run_start
    return RunResult(done, duration, summarize(done, duration))


def _since(start: float) -> float:
    return time.perf_counter() - start
