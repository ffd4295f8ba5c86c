"""The counter-based continuous-batching scheduler.

There is no prefill or decode phase. Each request has `num_computed_tokens` and `num_tokens`;
each step the scheduler lets the computed count of as many requests as it can catch up toward
the total under a token budget (`max_num_batched_tokens`) and `max_num_seqs`. Running requests
go first (mostly one decode token each, or the next chunk of a long prompt), then waiting ones
(prompt chunks, resumed preemptions), in priority order; while requests decode, the prompt
tokens a step takes are capped (step_budget.py), so a step carrying decodes stays short.
When the KV pool runs dry the lowest-priority, latest request is preempted: its blocks go back
to the pool (they stay in the prefix cache) and it is recomputed later.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol

from triode.engine.config import EngineConfig
from triode.engine.core.kv_cache_manager import KVCacheManager
from triode.engine.core.request import Request, RequestStatus, sample_request_id
from triode.engine.core.step_budget import QUEUE_DRAIN_STEPS, StepBudget, prefill_cap
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.spec_decode.stats import SpecDecodeStats


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step: which tokens to compute and where their KV goes."""

    request_id: str
    token_ids: list[int]  # the tokens computed this step
    start_pos: int  # position of token_ids[0] (= num_computed_tokens before the step)
    block_ids: list[int]
    # Sequences that get a sampled token from this request's last position: empty while a
    # prompt is still being chunked; [request_id] normally; n ids when an n>1 request forks.
    sample_ids: list[str]
    sampling_params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_id: int | None
    # Speculative decoding: the drafts to verify, the last len(spec_token_ids) of token_ids
    # (not yet part of the request's tokens). The runner returns the accepted ones plus one.
    spec_token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_scheduled_tokens: int = 0
    # (source block, destination block) copies to make before the step (copy-on-write).
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)
    # Requests that ended since the previous step; the runner drops their state.
    finished_request_ids: list[str] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class StopStringChecker(Protocol):
    """Matches stop strings in a request's text as its tokens arrive (the output processor:
    the scheduler knows tokens, not text)."""

    def check_stop_strings(self, request: Request, status: RequestStatus | None) -> str | None:
        """Take the request's new tokens; return the stop string they complete, if any.
        `status` is the decision from tokens alone (eos, stop token, length), or None."""
        ...


@dataclass(slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    spec_decode: SpecDecodeStats | None = None


class Scheduler:
    def __init__(self, config: EngineConfig, num_blocks: int, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.block_size = config.block_size
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.requests: dict[str, Request] = {}
        self.running: list[Request] = []
        # Heap of (priority, arrival_time, seq, request); aborted entries are skipped lazily.
        self._waiting: list[tuple[int, float, int, Request]] = []
        self._num_waiting = 0
        self._seq = itertools.count()
        self._finished_ids: list[str] = []
        self.num_preemptions = 0
        self.spec_stats = SpecDecodeStats()

    # ---- queue management ------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, f"duplicate id {request.request_id}"
        self.requests[request.request_id] = request
        self._push_waiting(request)

    def _push_waiting(self, request: Request) -> None:
        heapq.heappush(
            self._waiting, (request.priority, request.arrival_time, next(self._seq), request)
        )
        self._num_waiting += 1

    def _peek_waiting(self) -> Request | None:
        while self._waiting:
            request = self._waiting[0][3]
            if request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
                return request
            heapq.heappop(self._waiting)  # finished (aborted) while waiting
        return None

    def _pop_waiting(self) -> Request:
        request = heapq.heappop(self._waiting)[3]
        self._num_waiting -= 1
        return request

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    def waiting_requests(self) -> list[Request]:
        """The waiting and preempted requests, in no particular order."""
        return [
            entry[3]
            for entry in self._waiting
            if entry[3].status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        ]

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """End requests early (abort, stop string, error); unknown or finished ids are ignored."""
        assert status.is_finished
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self._num_waiting -= 1
            request.status = status
            self._free(request)
            finished.append(request)
        return finished

    def _free(self, request: Request) -> None:
        self.kv.free(request)
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)

    # ---- scheduling ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self._step_budget()
        out = SchedulerOutput()
        scheduled_ids: set[str] = set()
        has_preempted = False

        i = 0
        while i < len(self.running) and budget.tokens > 0:
            request = self.running[i]
            num_left = request.num_tokens - request.num_computed_tokens
            is_prefill = num_left > 1
            num_new = min(num_left, budget.prefill_room() if is_prefill else budget.tokens)
            spec = self._take_spec_tokens(request, budget.tokens)
            num_new += len(spec)
            if num_new <= 0:
                i += 1
                continue
            while not self.kv.allocate_slots(request, num_new):
                victim = max(self.running, key=lambda r: (r.priority, r.arrival_time))
                has_preempted = True
                if victim.request_id in scheduled_ids:
                    budget.give_back(victim.request_id, self._unschedule(out, victim.request_id))
                    scheduled_ids.discard(victim.request_id)
                victim_index = self.running.index(victim)
                self._preempt(victim)
                out.preempted_request_ids.append(victim.request_id)
                if victim_index < i:
                    i -= 1
                if victim is request:
                    break
            else:
                self._add_scheduled(out, request, num_new - len(spec), spec)
                scheduled_ids.add(request.request_id)
                budget.take(request.request_id, num_new, num_new if is_prefill else 0)
                i += 1
                continue
            break  # the request preempted itself: nothing after it can run either

        if not has_preempted:
            self._schedule_waiting(out, budget)

        out.num_scheduled_tokens = self.config.max_num_batched_tokens - budget.tokens
        out.blocks_to_copy = self.kv.take_pending_copies()
        out.finished_request_ids = self._finished_ids
        self._finished_ids = []
        return out

    def _step_budget(self) -> StepBudget:
        """The step's token budget; while requests decode, its prompt tokens are capped
        (step_budget.py says why and how). Decodes need no reserved room: running requests
        go first, and none mid-prompt can be ahead of a decoding one (a request is admitted
        only while the step has room left after every request before it)."""
        config = self.config
        total = config.max_num_batched_tokens
        if config.prefill_tokens_per_request <= 0:
            return StepBudget(total)
        num_decoding = 0
        num_queued = 0  # prompt tokens still to compute (prefix-cache hits not yet known)
        for request in self.running:
            num_left = request.num_tokens - request.num_computed_tokens
            if num_left == 1:
                num_decoding += 1
            else:
                num_queued += num_left
        enough = QUEUE_DRAIN_STEPS * total  # a queue this long lifts the cap: stop counting
        for request in self.waiting_requests():
            if num_queued >= enough:
                break
            num_queued += request.num_tokens - request.num_computed_tokens
        cap = prefill_cap(
            config.prefill_tokens_per_request,
            config.min_prefill_tokens,
            len(self.running) + self._num_waiting,
            num_decoding,
            num_queued,
        )
        return StepBudget(total, cap)

    def _schedule_waiting(self, out: SchedulerOutput, budget: StepBudget) -> None:
        max_num_seqs = self.config.max_num_seqs
        while budget.prefill_room() > 0:
            request = self._peek_waiting()
            if request is None:
                break
            n = request.sampling_params.n if request.needs_fork else 1
            if len(self.running) + n > max_num_seqs and self.running:
                if not self._preempt_for(request, out, budget):
                    break
                continue
            computed_blocks, num_cached = self.kv.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_cached, budget.prefill_room())
            if not self.kv.allocate_slots(request, num_new, computed_blocks):
                if not self._preempt_for(request, out, budget):
                    break
                continue
            self._pop_waiting()
            self.kv.record_prefix_lookup(request.num_tokens, num_cached)
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            self._add_scheduled(out, request, num_new)
            budget.take(request.request_id, num_new, num_new)

    def _preempt_for(self, request: Request, out: SchedulerOutput, budget: StepBudget) -> bool:
        """Make room for a waiting request by preempting a running one of strictly lower
        priority (higher value; the latest among equals); the victim's share of this step,
        if it had one, goes back to the budget. False if no running request ranks below the
        waiting one."""
        if not self.running:
            return False
        victim = max(self.running, key=lambda r: (r.priority, r.arrival_time))
        if victim.priority <= request.priority:
            return False
        if any(item.request_id == victim.request_id for item in out.scheduled):
            budget.give_back(victim.request_id, self._unschedule(out, victim.request_id))
        self._preempt(victim)
        out.preempted_request_ids.append(victim.request_id)
        return True

    def _take_spec_tokens(self, request: Request, budget: int) -> list[int]:
        """The request's drafts this step can verify (consumed either way): only for a
        request with one token left to compute, within the step budget, the request's
        max_tokens and the context length (the step adds at most k+1 tokens), and only when
        the pool has the slots without preempting anyone."""
        spec, request.spec_token_ids = request.spec_token_ids, []
        if not spec or request.num_tokens - request.num_computed_tokens != 1:
            return []
        k = min(
            len(spec),
            budget - 1,
            request.max_tokens - request.num_output_tokens - 1,
            self.max_model_len - request.num_tokens - 1,
        )
        if k <= 0 or not self.kv.can_allocate_slots(request, 1 + k):
            return []
        return spec[:k]

    def _add_scheduled(
        self, out: SchedulerOutput, request: Request, num_new: int, spec: list[int] = ()
    ) -> None:
        start = request.num_computed_tokens
        is_last_chunk = start + num_new == request.num_tokens
        if not is_last_chunk:
            sample_ids = []
        elif request.needs_fork:
            sample_ids = [
                sample_request_id(request.group_id, i) for i in range(request.sampling_params.n)
            ]
        else:
            sample_ids = [request.request_id]
        out.scheduled.append(
            ScheduledRequest(
                request_id=request.request_id,
                token_ids=[*request.all_token_ids[start : start + num_new], *spec],
                start_pos=start,
                block_ids=request.block_ids,
                sample_ids=sample_ids,
                sampling_params=request.sampling_params,
                prompt_token_ids=request.prompt_token_ids,
                output_token_ids=request.output_token_ids,
                eos_token_id=request.eos_token_id,
                spec_token_ids=list(spec),
            )
        )

    def _unschedule(self, out: SchedulerOutput, request_id: str) -> int:
        for j, item in enumerate(out.scheduled):
            if item.request_id == request_id:
                del out.scheduled[j]
                return len(item.token_ids)
        raise AssertionError(f"{request_id} was not scheduled")

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(request)

    # ---- after the step --------------------------------------------------------------------
    def update_from_output(
        self,
        out: SchedulerOutput,
        sampled: dict[str, int | list[int]],
        stop_strings: StopStringChecker | None = None,
    ) -> tuple[list[Request], list[Request]]:
        """Advance counters, append sampled tokens, fork n>1 requests, and finish the ones that
        hit a stop condition: eos, a stop token, the length limit, or (through `stop_strings`)
        a stop string; one decision per sample, taken here. Returns (requests that got a
        token, requests that finished).

        Called only for a step that completed: this is where the K/V the step wrote becomes
        part of a request's computed tokens, and the only place full blocks enter the
        prefix-cache index. Work that was scheduled but never completed (unscheduled,
        preempted, aborted, or in a failed step) never reaches it, so no block is ever found
        in the cache before its K/V exists. After a failed runner call (LLMEngine.step), the
        requests it failed have ended, their blocks back in the pool with nothing registered
        and their counters untouched, as if the step had not been scheduled; the others come
        here only once a run of their part has completed.
        """
        updated: list[Request] = []
        finished: list[Request] = []
        for item in out.scheduled:
            request = self.requests.get(item.request_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # finished or preempted meanwhile
            if item.spec_token_ids:
                self._update_speculating(request, item, sampled, stop_strings, updated, finished)
                continue
            request.num_computed_tokens += len(item.token_ids)
            self.kv.cache_computed_blocks(request)
            if not item.sample_ids:
                continue
            samples = [request]
            if len(item.sample_ids) > 1:
                samples += self._fork(request, item.sample_ids[1:])
            for sample in samples:
                token = sampled[sample.request_id]
                assert isinstance(token, int)
                updated.append(sample)
                status = self._append_token(sample, token, stop_strings)
                if status is not None:
                    self._finish_sample(sample, status, finished)
        return updated, finished

    def _update_speculating(
        self,
        request: Request,
        item: ScheduledRequest,
        sampled: dict[str, int | list[int]],
        stop_strings: StopStringChecker | None,
        updated: list[Request],
        finished: list[Request],
    ) -> None:
        """A verified step: the accepted drafts and the model's next token, appended one by
        one so a stop condition cuts the burst exactly where the plain decoder would stop.

        NOTE (KV rollback): only the positions whose token was kept count as computed, so
        `num_computed_tokens` ends one short of the tokens, as after any decode step; the
        rejected drafts' slots are overwritten by the next step, and never registered in the
        prefix cache, which only takes full blocks below `num_computed_tokens`."""
        tokens = sampled[request.request_id]
        assert isinstance(tokens, list) and 1 <= len(tokens) <= len(item.spec_token_ids) + 1
        self.spec_stats.record(len(item.spec_token_ids), len(tokens) - 1)
        status = None
        for token in tokens:
            status = self._append_token(request, token, stop_strings)
            if status is not None:
                break
        request.num_computed_tokens = request.num_tokens - 1
        self.kv.cache_computed_blocks(request)
        updated.append(request)
        if status is not None:
            self._finish_sample(request, status, finished)

    def _append_token(
        self, sample: Request, token: int, stop_strings: StopStringChecker | None
    ) -> RequestStatus | None:
        """Append one token and decide whether the sample stops there."""
        sample.append_output_token(token)
        status = self._check_stop(sample, token)
        if stop_strings is not None:
            matched = stop_strings.check_stop_strings(sample, status)
            if matched is not None:
                status = RequestStatus.FINISHED_STOPPED
                sample.stop_reason = matched
        return status

    def _finish_sample(
        self, sample: Request, status: RequestStatus, finished: list[Request]
    ) -> None:
        self.running.remove(sample)
        sample.status = status
        self._free(sample)
        finished.append(sample)

    def _fork(self, parent: Request, child_ids: list[str]) -> list[Request]:
        children = []
        position = self.running.index(parent) + 1
        for index, child_id in enumerate(child_ids, start=1):
            child = parent.fork(child_id, index)
            self.kv.fork(parent, child)
            self.requests[child_id] = child
            self.running.insert(position, child)
            position += 1
            children.append(child)
        return children

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if token == request.eos_token_id and not params.ignore_eos:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=self._num_waiting,
            kv_cache_usage=self.kv.usage,
            num_free_blocks=self.kv.num_free_blocks,
            prefix_cache_queries=self.kv.stats.num_queried_tokens,
            prefix_cache_hits=self.kv.stats.num_hit_tokens,
            num_preemptions=self.num_preemptions,
            spec_decode=self.spec_stats.copy(),
        )
