"""ThreadPolicy: torch's threads follow the cores other processes leave free, change only on
two agreeing looks, and see a real busy process through /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from triode.engine.runner.thread_policy import (
    ThreadPolicy,
    machine_busy_seconds,
    process_cpu_seconds,
    threads_beside_front_end,
)


class FakeMachine:
    """A clock and CPU counters the test advances: `others` cores busy besides us."""

    def __init__(self) -> None:
        self.now = 0.0
        self.machine = 0.0
        self.own = 0.0

    def advance(self, seconds: float, others: float, own: float = 1.0) -> None:
        self.now += seconds
        self.own += own * seconds
        self.machine += (others + own) * seconds


def make_policy(machine: FakeMachine, applied: list[int], max_threads: int = 2, cores: int = 2):
    return ThreadPolicy(
        max_threads,
        cores=cores,
        interval_s=0.5,
        set_threads=applied.append,
        clock=lambda: machine.now,
        machine_busy=lambda: machine.machine,
        own_busy=lambda: machine.own,
    )


def test_a_busy_core_drops_a_thread_after_two_looks_and_it_comes_back():
    m, applied = FakeMachine(), []
    policy = make_policy(m, applied)
    m.advance(0.6, others=0.2)  # our own front end and a client: keep both cores
    assert policy.maybe_adjust() == 2
    m.advance(0.6, others=1.0)  # `yes` starts
    assert policy.maybe_adjust() == 2  # one look is not enough
    m.advance(0.1, others=1.0)
    assert policy.maybe_adjust() == 2  # too soon to look again
    m.advance(0.5, others=1.0)
    assert policy.maybe_adjust() == 1 and applied == [1]
    m.advance(0.6, others=0.1)
    m.advance(0.0, others=0.0)
    assert policy.maybe_adjust() == 1
    m.advance(0.6, others=0.1)
    assert policy.maybe_adjust() == 2 and applied == [1, 2]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 40).map(lambda x: x / 10), min_size=1, max_size=30), st.integers(1, 4)
)
def test_against_the_rule(loads, cores):
    """Reference: round(cores - others), clamped, applied when two looks in a row agree."""
    m, applied = FakeMachine(), []
    policy = make_policy(m, applied, max_threads=cores, cores=cores)
    threads, pending = cores, None
    for others in loads:
        m.advance(0.5, others=others)
        wanted = max(1, min(cores, int(cores - others + 0.5)))
        if cores > 1:
            if wanted == threads:
                pending = None
            elif pending == wanted:
                threads, pending = wanted, None
            else:
                pending = wanted
        assert policy.maybe_adjust() == threads
        assert 1 <= threads <= cores
    assert applied == [t for i, t in enumerate(applied) if i == 0 or t != applied[i - 1]]


def test_sees_a_real_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        machine0, own0, t0 = machine_busy_seconds(), process_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        machine1, own1 = machine_busy_seconds(), process_cpu_seconds()
        elapsed = time.monotonic() - t0
        child = process_cpu_seconds(busy.pid)
    finally:
        busy.kill()
        busy.wait()
    assert None not in (machine0, machine1, own0, own1, child)
    others = ((machine1 - machine0) - (own1 - own0)) / elapsed
    assert others >= 0.6  # the spinning child, at least most of a core
    assert child is not None and child > 0  # /proc/PID/stat parses


def test_an_engine_process_leaves_a_core_to_the_front_end_only_beyond_two():
    assert threads_beside_front_end(2, cores=2) == 2
    assert threads_beside_front_end(1, cores=1) == 1
    assert threads_beside_front_end(4, cores=4) == 3
    assert threads_beside_front_end(8, cores=16) == 8  # torch's own (physical-core) count
    assert threads_beside_front_end(16, cores=16) == 15
