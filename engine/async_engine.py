"""AsyncEngine: the trio actor that owns an LLMEngine, and the only door to it.

One task (`run`) owns the engine; everything else talks to it through a bounded command
channel (add, shutdown) and a set of pending aborts (adding to it never blocks). Each step runs
in a worker thread (`trio.to_thread.run_sync`) so the event loop keeps serving sockets
meanwhile; commands and aborts that arrive during a step are applied between steps. When there
is nothing to do the task blocks on its inbox: it never polls.

Callers see plain data only: `model_info` (what the served model is), `state` (one lifecycle
enum), `input_processor` (templating, tokenization and validation in worker threads),
`submit`/`submit_all` (validated `EngineInput`s in, a `RequestStream` of deltas out), `abort`,
and `stats()`. So the engine core behind the actor may change, or move to a process of its own,
without its callers noticing.

    async with trio.open_nursery() as nursery:
        engine = AsyncEngine(EngineConfig())
        await nursery.start(engine.run)          # returns once the model and KV cache are ready
        stream = await engine.generate("Once upon a time", SamplingParams(max_tokens=32))
        async for delta in stream:
            print(delta.text, end="")
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

import trio

from triode.engine.config import EngineConfig
from triode.engine.core.scheduler import SchedulerStats
from triode.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
)
from triode.engine.input_processor import InputProcessor
from triode.engine.inputs import EngineInput, ModelInfo
from triode.engine.llm_engine import LLMEngine
from triode.engine.metrics import EngineMetrics, EngineStats
from triode.engine.process.actor_process import (
    MAX_FAILED_STEPS,
    Add,
    EngineState,
    ProcessLoop,
    Shutdown,
)
from triode.engine.process.core_client import CoreProcess
from triode.engine.process.step_profile import LoopBusyInstrument, StepProfile, timed_step
from triode.engine.process.stream_router import Tracked, error_delta, route_deltas
from triode.engine.sampling.sampling_params import SamplingParams
from triode.streaming.delta import RequestDelta
from triode.streaming.request_stream import RequestStream

logger = logging.getLogger(__name__)

_INBOX_SIZE = 256


class AsyncEngine(ProcessLoop):
    def __init__(self, config: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.config = config or (engine.config if engine else EngineConfig())
        self._core = engine
        self._send, self._recv = trio.open_memory_channel[Any](_INBOX_SIZE)
        self._tracked: dict[str, Tracked] = {}
        self._num_queued_adds = 0  # sent but not yet applied
        self._num_added_since_stats = 0  # applied, not yet in the stats' waiting count
        self._pending_aborts: set[str] = set()
        self._abort_scope: trio.CancelScope | None = None  # wakes the process mode's sender
        self._num_child_adds = 0  # adds the engine process has applied
        self._stopping = False
        self._process: CoreProcess | None = None
        self.profile = StepProfile()
        self._state = EngineState.LOADING
        self._dead_reason: str | None = None
        self._draining = trio.Event()
        self._model_info: ModelInfo | None = None
        self._input_processor: InputProcessor | None = None
        self._stats = EngineStats()
        self.metrics: EngineMetrics | None = None
        self._id_prefix = uuid.uuid4().hex[:12]
        self._num_ids = 0

    # ---- what callers may read ----------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def dead_reason(self) -> str | None:
        """Why the engine is DEAD (None otherwise)."""
        return self._dead_reason

    @property
    def model_info(self) -> ModelInfo:
        """The served model; raises EngineNotReadyError until the model is loaded."""
        if self._model_info is None:
            raise self._not_serving_error()
        return self._model_info

    @property
    def input_processor(self) -> InputProcessor:
        """Templating, tokenization and validation in worker threads (once loaded)."""
        if self._input_processor is None:
            raise self._not_serving_error()
        return self._input_processor

    @property
    def draining(self) -> trio.Event:
        """Set once the engine stops taking new requests (draining, stopped or dead). Read it;
        `begin_draining` sets it."""
        return self._draining

    @property
    def num_unfinished(self) -> int:
        return len(self._tracked)

    def stats(self) -> EngineStats:
        """A snapshot of the counters and gauges as of the last step (for logs, balancers)."""
        return dataclasses.replace(self._stats)

    # ---- the actor --------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the model (in a child process, or a thread), report ready, then serve commands
        until shut down.

        A model that fails to load leaves the state DEAD (with `dead_reason`) and re-raises.
        """
        process: CoreProcess | None = None
        try:
            if self._core is None and self.config.engine_process:
                process = self._process = await CoreProcess.start(self.config)
                info = process.model_info
                tokenizer = None
            else:
                if self._core is None:
                    self._core = await trio.to_thread.run_sync(LLMEngine, self.config)
                info, tokenizer = self._core.model_info, self._core.tokenizer
            self._input_processor = await trio.to_thread.run_sync(
                InputProcessor,
                info,
                self.config.num_input_workers,
                tokenizer,
                # The engine's compile cache when it runs here; a child process compiles anew.
                self._core.structured.compiler if self._core is not None else None,
            )
        except BaseException as exc:
            if process is not None:
                await process.close()
            self._mark_dead(f"the model failed to load: {type(exc).__name__}: {exc}")
            raise
        self._model_info = info
        self.metrics = EngineMetrics(info.name)
        if self._state is EngineState.LOADING:  # else draining began while it loaded
            self._state = EngineState.READY
        instrument = LoopBusyInstrument(self.profile)
        trio.lowlevel.add_instrument(instrument)
        task_status.started()
        try:
            if process is not None:
                await self._loop_process(process)
            else:
                assert self._core is not None
                await self._loop(self._core)
        except Exception as exc:  # a bug in the engine itself: fail everything, stay up as dead
            logger.exception("engine loop crashed")
            self._mark_dead(f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(instrument)
            if process is not None:
                # NOTE: cancelled here means "stop at once" (a second signal): the child gets
                # no grace, else a step in progress would hold the exit for seconds.
                await process.close(is_graceful=not _is_cancelled())
            if self._state is not EngineState.DEAD:
                self._state = EngineState.STOPPED
            self._draining.set()
            self._recv.close()  # later sends fail fast instead of waiting on a dead inbox
            self._fail_all("the server is shutting down", finish_reason="abort")
            if self.profile.num_steps:
                logger.info("serving profile: %s", self.profile.summary())

    async def _loop(self, core: LLMEngine) -> None:
        while True:
            if not core.has_unfinished_requests():
                command = await self._recv.receive()  # idle: sleep until there is work
                if not self._apply(core, command):
                    return
            while True:
                try:
                    command = self._recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if not self._apply(core, command):
                    return
            if self._pending_aborts:
                aborts = list(self._pending_aborts)
                self._pending_aborts.clear()
                self._dispatch(core.abort(aborts))
            if not core.has_unfinished_requests():
                self._update_stats(core.stats())
                continue
            deltas = await trio.to_thread.run_sync(timed_step, core, self.profile)
            self._dispatch(deltas)
            self._update_stats(core.stats())
            if core.num_failed_steps >= MAX_FAILED_STEPS:
                self._mark_dead(core.last_error or "repeated step failures")
                return

    def _apply(self, core: LLMEngine, command: Any) -> bool:
        """Apply one command between steps; False means stop."""
        if isinstance(command, Add):
            self._num_queued_adds -= 1
            try:
                core.add_input(command.request_id, command.engine_input)
                self._num_added_since_stats += 1
            except InvalidRequestError as exc:  # e.g. an id still in use; tell the caller
                message = str(exc)
                self._tracked.pop(command.request_id, None)
                command.stream.finish_nowait(lambda i: error_delta(command.request_id, i, message))
        elif isinstance(command, Shutdown):
            return False
        return True

    def _dispatch(self, deltas: list[RequestDelta]) -> None:
        self.profile.num_chunks += len(deltas)
        route_deltas(deltas, self._tracked, self._stats, self.metrics, self.profile)

    def _update_stats(self, s: SchedulerStats) -> None:
        stats = self._stats
        stats.num_running, stats.num_waiting = s.num_running, s.num_waiting
        stats.kv_cache_usage = s.kv_cache_usage
        stats.prefix_cache_queries, stats.prefix_cache_hits = (
            s.prefix_cache_queries,
            s.prefix_cache_hits,
        )
        stats.num_preemptions = s.num_preemptions
        stats.spec_decode = s.spec_decode
        self._num_added_since_stats = 0
        if self.metrics is not None:
            self.metrics.update_engine_state(stats)

    def _mark_dead(self, reason: str) -> None:
        self._state = EngineState.DEAD
        self._dead_reason = reason
        self._draining.set()
        if self.metrics is not None:
            self.metrics.engine_healthy.set(0)
        self._fail_all(f"the engine failed and cannot continue: {reason}")

    def _fail_all(self, message: str, finish_reason: str = "error") -> None:
        for request_id, tracked in list(self._tracked.items()):
            tracked.stream.finish_nowait(
                lambda i, rid=request_id: error_delta(rid, i, message, finish_reason)
            )
        self._tracked.clear()
        if self._core is not None:
            try:
                self._core.abort(list(self._core.scheduler.requests))
            except Exception:  # the engine may be broken; its memory goes with the process
                logger.exception("could not release requests after a failure")

    # ---- the public API ---------------------------------------------------------------------
    async def submit(
        self, engine_input: EngineInput, request_id: str | None = None
    ) -> RequestStream:
        """Queue one checked request (see `InputProcessor`); returns the stream of its deltas.

        Raises QueueFullError, EngineNotReadyError (or its subclasses), InvalidRequestError for
        an id already in use.
        """
        ids = None if request_id is None else [request_id]
        return (await self.submit_all([engine_input], ids))[0]

    async def submit_all(
        self, engine_inputs: Sequence[EngineInput], request_ids: Sequence[str] | None = None
    ) -> list[RequestStream]:
        """Queue several requests, all or none (one API request with several prompts).

        A batch larger than the whole queue (`max_num_waiting`) could never be accepted: it
        raises InvalidRequestError naming `prompt`, not QueueFullError.
        """
        self.check_serving()
        num = len(engine_inputs)
        limit = self.config.max_num_waiting
        if num > limit:
            raise InvalidRequestError(
                f"this request has {num} prompts, but at most {limit} requests can wait in the "
                f"queue (max_num_waiting); send at most {limit} prompts per request",
                "prompt",
            )
        num_waiting = self._stats.num_waiting + self._num_added_since_stats + self._num_queued_adds
        if num_waiting + num > limit:
            raise QueueFullError(
                f"the server is busy ({num_waiting} requests waiting, limit {limit}); retry later",
                self._retry_after_s(),
            )
        if request_ids is None:
            request_ids = [self._new_request_id() for _ in range(num)]
        if len(request_ids) != num or len(set(request_ids)) != num:
            raise ValueError("need one distinct request id per input")
        for request_id in request_ids:
            if request_id in self._tracked:
                raise InvalidRequestError(f"request id {request_id!r} is already in use")
        streams = []
        for request_id, engine_input in zip(request_ids, engine_inputs):
            stream = RequestStream(request_id, engine_input.params.n)
            self._tracked[request_id] = Tracked(stream, stream.arrival_time)
            streams.append(stream)
        self._num_queued_adds += num
        sent = 0
        try:
            for request_id, engine_input, stream in zip(request_ids, engine_inputs, streams):
                await self._send.send(Add(request_id, engine_input, stream))
                sent += 1
        except BaseException as exc:
            self._num_queued_adds -= num - sent
            for request_id in request_ids[sent:]:
                self._tracked.pop(request_id, None)
            for request_id in request_ids[:sent]:
                self.abort_nowait(request_id)
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                raise EngineStoppedError("the engine has shut down") from None
            raise
        return streams

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, priority: int = 0
    ) -> RequestStream:
        """Tokenize and check a prompt (in a worker thread), then submit it."""
        self.check_serving()
        return await self.submit(await self.input_processor.process(prompt, params, priority))

    def abort_nowait(self, request_id: str) -> None:
        """Abort a request (all its samples); its KV blocks return to the pool before the next
        step. Never blocks, so a burst of disconnects cannot wait on a full command queue;
        the pending set holds at most one entry per tracked request."""
        if self._state in (EngineState.STOPPED, EngineState.DEAD):
            return
        if request_id in self._tracked:
            self._pending_aborts.add(request_id)
            if self._abort_scope is not None:
                self._abort_scope.cancel()

    async def abort(self, request_id: str) -> None:
        """`abort_nowait`, for callers that prefer to await."""
        self.abort_nowait(request_id)
        await trio.lowlevel.checkpoint()

    def begin_draining(self) -> None:
        """Take no new requests (they get EngineStoppedError); running ones continue."""
        if self._state in (EngineState.LOADING, EngineState.READY):
            self._state = EngineState.DRAINING
        self._draining.set()

    async def shutdown(self) -> None:
        """Stop the actor after the current step; unfinished requests end with an error."""
        self.begin_draining()
        if self._state is not EngineState.STOPPED:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send.send(Shutdown())

    # ---- helpers ----------------------------------------------------------------------------
    def check_serving(self) -> None:
        """Raise the EngineNotReadyError (subclass) that says why, unless READY."""
        if self._state is not EngineState.READY:
            raise self._not_serving_error()

    def _not_serving_error(self) -> EngineNotReadyError:
        state = self._state
        if state is EngineState.DEAD:
            return EngineDeadError(f"the engine failed: {self._dead_reason}")
        if state is EngineState.LOADING:
            return EngineNotReadyError("the engine is still loading")
        if state is EngineState.READY:  # loaded, but a caller asked for what is not there yet
            return EngineNotReadyError("the engine is still starting")
        return EngineStoppedError("the server is shutting down")

    def _new_request_id(self) -> str:
        self._num_ids += 1
        return f"{self._id_prefix}-{self._num_ids:x}"

    def _retry_after_s(self) -> int:
        """A hint for when the queue may have room (at least one second)."""
        return max(1, math.ceil(self._stats.num_waiting / max(1, self.config.max_num_seqs)))


def _is_cancelled() -> bool:
    """Whether the calling task's scope is cancelled (its effective deadline has passed)."""
    return trio.current_effective_deadline() == -math.inf
