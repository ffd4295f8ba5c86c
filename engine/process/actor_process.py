"""The actor's half of an engine core in a child process (mixed into `AsyncEngine`), and the
actor's lifecycle and inbox commands.

Two tasks: `_forward_commands` sends queued adds, then pending aborts, to the child;
`_loop_process` hands the child's per-step outputs to the request streams and the stats. The
child's exit or crash makes the engine DEAD (unless it was asked to stop).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from triode.engine.inputs import EngineInput
from triode.engine.process.core_client import CoreProcess
from triode.engine.process.step_profile import StepProfile
from triode.streaming.request_stream import RequestStream

if TYPE_CHECKING:
    from triode.engine.core.scheduler import SchedulerStats
    from triode.streaming.delta import RequestDelta

# Consecutive failed steps after which the engine is declared dead.
MAX_FAILED_STEPS = 3


class EngineState(enum.Enum):
    """The actor's lifecycle: LOADING -> READY -> DRAINING -> STOPPED; DEAD from any state
    when the engine fails. Only READY takes new requests."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # finishing what it has, taking nothing new
    STOPPED = "stopped"  # shut down
    DEAD = "dead"  # failed to load or while running; see `dead_reason`


@dataclass(slots=True)
class Add:
    request_id: str
    engine_input: EngineInput
    stream: RequestStream


class Shutdown:
    pass


class ProcessLoop:
    """Mixed into AsyncEngine, whose state these methods share."""

    _recv: trio.MemoryReceiveChannel[Any]
    _pending_aborts: set[str]
    _abort_scope: trio.CancelScope | None
    _stopping: bool
    _num_queued_adds: int
    _num_child_adds: int
    profile: StepProfile

    def _dispatch(self, deltas: list[RequestDelta]) -> None:
        raise NotImplementedError

    def _update_stats(self, s: SchedulerStats) -> None:
        raise NotImplementedError

    def _mark_dead(self, reason: str) -> None:
        raise NotImplementedError

    async def _loop_process(self, process: CoreProcess) -> None:
        """The actor's side of an engine core in a child process: one task forwards commands
        and aborts, this one hands the child's outputs to the request streams. The child's
        exit (or a crash) makes the engine DEAD, unless it was asked to stop."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_commands, process, nursery.cancel_scope)
            while True:
                try:
                    message = await process.receive()
                except EOFError:
                    if not self._stopping:
                        await process.close()
                        self._mark_dead(process.exit_description())
                    nursery.cancel_scope.cancel()
                    return
                _, deltas, stats, num_adds, num_failed, last_error, timing = message
                self._num_queued_adds -= num_adds - self._num_child_adds
                self._num_child_adds = num_adds
                self._dispatch(deltas)
                self._update_stats(stats)
                step_s, forward_s, num_tokens = timing
                if num_tokens:
                    self.profile.add_step(step_s, forward_s, num_tokens, 0.0, 0.0)
                if num_failed >= MAX_FAILED_STEPS:
                    self._mark_dead(last_error or "repeated step failures")
                    nursery.cancel_scope.cancel()
                    return

    async def _forward_commands(self, process: CoreProcess, cancel_scope: trio.CancelScope) -> None:
        """Send queued adds, then pending aborts, to the child. `abort_nowait` cancels the
        wait for a command (never a send: a cut-off frame would corrupt the stream)."""
        while True:
            command = None
            if not self._pending_aborts:
                with trio.CancelScope() as self._abort_scope:
                    command = await self._recv.receive()
                self._abort_scope = None
            if isinstance(command, Shutdown):
                self._stopping = True
                await process.close()
                cancel_scope.cancel()
                return
            if isinstance(command, Add):
                await process.send(("add", command.request_id, command.engine_input))
            if self._pending_aborts:
                aborts = list(self._pending_aborts)
                self._pending_aborts.clear()
                await process.send(("abort", aborts))
