"""ThreadPolicy: how many threads torch uses for a step, from what else the machine runs.

torch's OpenMP threads meet at a barrier after every operation, so a step runs at the pace of
its slowest thread. When another busy process takes one of the cores, the thread that shares
that core gets half of it (and loses whole time slices at a time), and every barrier waits for
it: on 2 cores one `yes > /dev/null` cut serving from ~250 to ~69 tok/s, while a single thread
on the free core keeps more than half. So before a step the policy (at most every `interval_s`)
measures how much CPU the rest of the machine used since its last look, in cores, and runs on
the cores left over: `threads = clamp(round(cores - others), 1, max_threads)`.

"Others" is total CPU time (`/proc/stat`) minus the CPU time of the processes that serve with
us: this one and, for an engine core in a child process, the server that owns it (its event
loop is our own front end, not a competitor). A change takes two agreeing looks in a row, so
a short burst (a test, a compile) does not flap the thread count. Where `/proc` is missing
(not Linux) the policy keeps `max_threads`.

NOTE: `torch.set_num_threads` sets OpenMP's count for the calling thread (and the default for
threads that have not run torch yet), so the policy must be applied by the thread that runs the
steps: `LLMEngine.step` calls `maybe_adjust` first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (None where /proc/stat is unreadable)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user/nice.
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - values[4]
    return busy / _CLOCK_TICKS


def process_cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds of a process, all its threads (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces: fields start after its closing parenthesis.
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_beside_front_end(torch_threads: int, cores: int | None = None) -> int:
    """The most threads an engine process should use: with more than two cores, one is left
    to the server's event loop (and the client on the same machine), so torch's barriers are
    not held up by the front end's bursts; with one or two cores the model needs them all
    (the front end's share is small and the adaptive count reacts to anything bigger)."""
    cores = cores or available_cores()
    if cores > 2:
        return max(1, min(torch_threads, cores - 1))
    return torch_threads


class ThreadPolicy:
    """Adapts torch's thread count to the cores other processes leave free (module docstring).

    `set_threads` is how a decision is applied (default `torch.set_num_threads`); `clock`,
    `machine_busy` and `own_busy` are injectable so the rule can be tested without load.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        cores: int | None = None,
        our_pids: Sequence[int | str] = ("self",),
        interval_s: float = 0.5,
        set_threads: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        machine_busy: Callable[[], float | None] = machine_busy_seconds,
        own_busy: Callable[[], float | None] | None = None,
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self.max_threads = max_threads
        self.cores = cores or available_cores()
        self.interval_s = interval_s
        self.threads = max_threads
        self.num_changes = 0
        self.last_others = 0.0  # cores the rest of the machine used at the last look
        self._set_threads = set_threads or _torch_set_num_threads
        self._clock = clock
        self._machine_busy = machine_busy
        self._own_busy = own_busy or (lambda: _sum_cpu(our_pids))
        self._last_time = clock()
        self._last_machine = machine_busy()
        self._last_own = self._own_busy()
        self._pending: int | None = None  # a change seen once, applied if seen again

    def maybe_adjust(self) -> int:
        """Look again if `interval_s` passed; returns the thread count to run with."""
        now = self._clock()
        elapsed = now - self._last_time
        if elapsed < self.interval_s or self.max_threads == 1:
            return self.threads
        machine, own = self._machine_busy(), self._own_busy()
        last_machine, last_own = self._last_machine, self._last_own
        self._last_time, self._last_machine, self._last_own = now, machine, own
        if None in (machine, own, last_machine, last_own):
            return self.threads
        others = max(0.0, (machine - last_machine) - (own - last_own)) / elapsed  # type: ignore[operator]
        self.last_others = others
        wanted = max(1, min(self.max_threads, int(self.cores - others + 0.5)))
        if wanted == self.threads:
            self._pending = None
        elif self._pending == wanted:
            logger.info(
                "torch threads %d -> %d (other processes used %.1f of %d cores)",
                self.threads,
                wanted,
                others,
                self.cores,
            )
            self._set_threads(wanted)
            self.threads = wanted
            self.num_changes += 1
            self._pending = None
        else:
            self._pending = wanted
        return self.threads


def _sum_cpu(pids: Sequence[int | str]) -> float | None:
    total = 0.0
    for pid in pids:
        seconds = process_cpu_seconds(pid)
        if seconds is None:
            if pid == "self":
                return None
            continue  # a parent that went away counts as nothing
        total += seconds
    return total


def _torch_set_num_threads(num: int) -> None:
    import torch

    torch.set_num_threads(num)
