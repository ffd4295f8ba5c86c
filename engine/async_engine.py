"""AsyncEngine: the trio actor that owns an LLMEngine.

One task (`run`) owns the engine; everything else talks to it through a bounded command
channel (add, shutdown) and a set of pending aborts (adding to it never blocks). Each step runs
in a worker thread (`trio.to_thread.run_sync`) so the event loop keeps serving sockets
meanwhile; commands and aborts that arrive during a step are applied between steps. When there is nothing to do the task blocks on its inbox: it never polls.

    async with trio.open_nursery() as nursery:
        engine = AsyncEngine(EngineConfig())
        await nursery.start(engine.run)          # returns once the model and KV cache are ready
        stream = await engine.submit(prompt_ids, SamplingParams(max_tokens=32))
        async for delta in stream:
            print(delta.text, end="")
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import trio

from triode.engine.config import EngineConfig
from triode.engine.errors import EngineNotReadyError, QueueFullError
from triode.engine.llm_engine import LLMEngine
from triode.engine.metrics import EngineMetrics
from triode.engine.sampling.sampling_params import SamplingParams
from triode.streaming.delta import RequestDelta
from triode.streaming.request_stream import RequestStream

logger = logging.getLogger(__name__)

# Consecutive failed steps after which the engine is declared dead.
_MAX_FAILED_STEPS = 3
_INBOX_SIZE = 256


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    stream: RequestStream


class _Shutdown:
    pass


@dataclass(slots=True)
class _Tracked:
    """Per-request timing for the latency metrics."""

    stream: RequestStream
    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    num_prompt_tokens: int = 0


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.config = config or (engine.config if engine else EngineConfig())
        self._engine = engine
        self._send, self._recv = trio.open_memory_channel[Any](_INBOX_SIZE)
        self._tracked: dict[str, _Tracked] = {}
        self._num_queued_adds = 0  # sent but not yet applied
        self._pending_aborts: set[str] = set()
        self._num_waiting = 0  # the engine's waiting queue after the last step
        self._ready = False
        self._dead_reason: str | None = None
        self._stopped = False
        self.metrics: EngineMetrics | None = None
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:8]

    # ---- state ------------------------------------------------------------------------------
    @property
    def engine(self) -> LLMEngine:
        if self._engine is None:
            raise EngineNotReadyError("the engine is still loading")
        return self._engine

    @property
    def is_ready(self) -> bool:
        return self._ready and not self._stopped

    @property
    def is_healthy(self) -> bool:
        return self.is_ready and self._dead_reason is None

    @property
    def dead_reason(self) -> str | None:
        return self._dead_reason

    @property
    def num_unfinished(self) -> int:
        return len(self._tracked)

    # ---- the actor --------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the model (in a thread), report ready, then serve commands until cancelled."""
        if self._engine is None:
            self._engine = await trio.to_thread.run_sync(LLMEngine, self.config)
        self.metrics = EngineMetrics(self._engine.model_name)
        self._ready = True
        task_status.started()
        try:
            await self._loop()
        except Exception as exc:  # a bug in the engine itself: fail everything, stay up as dead
            logger.exception("engine loop crashed")
            self._mark_dead(f"{type(exc).__name__}: {exc}")
        finally:
            self._stopped = True
            self._recv.close()  # later sends fail fast instead of waiting on a dead inbox
            self._fail_all("the server is shutting down", finish_reason="abort")

    async def _loop(self) -> None:
        engine = self.engine
        while True:
            if not engine.has_unfinished_requests():
                command = await self._recv.receive()  # idle: sleep until there is work
                if not self._apply(command):
                    return
            while True:
                try:
                    command = self._recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if not self._apply(command):
                    return
            if self._pending_aborts:
                aborts = list(self._pending_aborts)
                self._pending_aborts.clear()
                self._dispatch(engine.abort(aborts))
            if not engine.has_unfinished_requests():
                self._update_engine_metrics()
                continue
            deltas = await trio.to_thread.run_sync(engine.step)
            self._dispatch(deltas)
            self._update_engine_metrics()
            if engine.num_failed_steps >= _MAX_FAILED_STEPS:
                self._mark_dead(engine.last_error or "repeated step failures")
                return

    def _apply(self, command: Any) -> bool:
        """Apply one command between steps; False means stop."""
        engine = self.engine
        if isinstance(command, _Add):
            self._num_queued_adds -= 1
            try:
                engine.add_request(
                    command.request_id, command.prompt_token_ids, command.params, command.priority
                )
            except ValueError as exc:  # raced with a limit; tell the caller
                message = str(exc)
                self._tracked.pop(command.request_id, None)
                command.stream.finish_nowait(lambda i: _error_delta(command.request_id, i, message))
                return True
            self._num_waiting += 1
        elif isinstance(command, _Shutdown):
            return False
        return True

    def _dispatch(self, deltas: list[RequestDelta]) -> None:
        now = time.monotonic()
        metrics = self.metrics
        for delta in deltas:
            tracked = self._tracked.get(delta.request_id)
            if tracked is None:
                continue
            if delta.token_ids and metrics is not None:
                metrics.generation_tokens.inc(len(delta.token_ids))
                if tracked.first_token is None:
                    tracked.first_token = now
                    metrics.time_to_first_token.observe(now - tracked.arrival)
                elif tracked.last_token is not None:
                    metrics.inter_token_latency.observe(now - tracked.last_token)
                tracked.last_token = now
            if delta.queue_time_s is not None and metrics is not None:
                metrics.request_queue_time.observe(delta.queue_time_s)
            tracked.num_prompt_tokens = delta.num_prompt_tokens or tracked.num_prompt_tokens
            tracked.stream.push_nowait(delta)
            if delta.is_finished and metrics is not None:
                metrics.finished(delta.finish_reason or "unknown")
            if tracked.stream.is_finished:
                del self._tracked[delta.request_id]
                if metrics is not None:
                    metrics.e2e_request_latency.observe(now - tracked.arrival)
                    metrics.prompt_tokens.inc(tracked.num_prompt_tokens)

    def _update_engine_metrics(self) -> None:
        stats = self.engine.stats()
        self._num_waiting = stats.num_waiting
        if self.metrics is not None:
            self.metrics.update_engine_state(
                stats.num_running,
                stats.num_waiting,
                stats.kv_cache_usage,
                stats.prefix_cache_queries,
                stats.prefix_cache_hits,
                stats.num_preemptions,
            )

    def _mark_dead(self, reason: str) -> None:
        self._dead_reason = reason
        if self.metrics is not None:
            self.metrics.engine_healthy.set(0)
        self._fail_all(f"the engine failed and cannot continue: {reason}")

    def _fail_all(self, message: str, finish_reason: str = "error") -> None:
        for request_id, tracked in list(self._tracked.items()):
            tracked.stream.finish_nowait(
                lambda i, rid=request_id: _error_delta(rid, i, message, finish_reason)
            )
        self._tracked.clear()
        if self._engine is not None:
            try:
                self._engine.abort(list(self._engine.scheduler.requests))
            except Exception:  # the engine may be broken; its memory goes with the process
                logger.exception("could not release requests after a failure")

    # ---- the public API ---------------------------------------------------------------------
    def new_request_id(self, prefix: str = "cmpl") -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):x}"

    async def submit(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Queue a request; returns the stream of its deltas.

        Raises ValueError (bad request, e.g. too long for the context), QueueFullError, or
        EngineNotReadyError.
        """
        self._check_serving()
        engine = self.engine
        engine.validate(prompt_token_ids, params)
        limit = self.config.max_num_waiting
        if self._num_waiting + self._num_queued_adds >= limit:
            raise QueueFullError(
                f"the server is busy ({limit} requests waiting); retry later", self.retry_after_s()
            )
        request_id = request_id or self.new_request_id()
        if request_id in self._tracked:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = RequestStream(request_id, params.n)
        self._tracked[request_id] = _Tracked(stream, stream.arrival_time)
        self._num_queued_adds += 1
        try:
            await self._send.send(
                _Add(request_id, list(prompt_token_ids), params, priority, stream)
            )
        except trio.BrokenResourceError:
            self._num_queued_adds -= 1
            self._tracked.pop(request_id, None)
            raise EngineNotReadyError("the engine has shut down") from None
        except BaseException:
            self._num_queued_adds -= 1
            self._tracked.pop(request_id, None)
            raise
        return stream

    def abort_nowait(self, request_id: str) -> None:
        """Abort a request (all its samples); its KV blocks return to the pool before the next
        step. Never blocks, so a burst of disconnects cannot wait on a full command queue;
        the pending set holds at most one entry per tracked request."""
        if self._stopped or self._dead_reason is not None:
            return
        if request_id in self._tracked:
            self._pending_aborts.add(request_id)

    async def abort(self, request_id: str) -> None:
        """`abort_nowait`, for callers that prefer to await."""
        self.abort_nowait(request_id)
        await trio.lowlevel.checkpoint()

    async def shutdown(self) -> None:
        """Stop the actor after the current step; unfinished requests end with an error."""
        if not self._stopped:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._send.send(_Shutdown())

    def _check_serving(self) -> None:
        if self._dead_reason is not None:
            raise EngineNotReadyError(f"the engine failed: {self._dead_reason}")
        if not self._ready:
            raise EngineNotReadyError("the engine is still loading")
        if self._stopped:
            raise EngineNotReadyError("the engine has shut down")

    def retry_after_s(self) -> int:
        """A hint for Retry-After when the queue is full (at least one second)."""
        return max(1, math.ceil(self._num_waiting / max(1, self.config.max_num_seqs)))


def _error_delta(
    request_id: str, index: int, message: str, finish_reason: str = "error"
) -> RequestDelta:
    return RequestDelta(
        request_id=request_id, index=index, finish_reason=finish_reason, error=message
    )
