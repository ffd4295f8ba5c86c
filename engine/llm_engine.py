"""LLMEngine: the synchronous engine. add_request / step / abort; no threads, no I/O.

`step()` is schedule -> run -> update, and returns the text deltas the step produced. The
trio actor (engine.async_engine) and the offline LLM API both drive this class.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from triode.engine.config import EngineConfig
from triode.engine.core.kv_invariants import KVInvariantChecker
from triode.engine.core.request import Request, RequestStatus
from triode.engine.core.scheduler import (
    ScheduledRequest,
    Scheduler,
    SchedulerOutput,
    SchedulerStats,
)
from triode.engine.errors import InvalidRequestError
from triode.engine.inputs import EngineInput, ModelInfo, make_engine_input
from triode.engine.models.loader import resolve_model
from triode.engine.output_processor import OutputProcessor
from triode.engine.runner.model_runner import ModelRunner, RunnerOutput
from triode.engine.runner.thread_policy import ThreadPolicy
from triode.engine.sampling.logit_controls import resolve_bad_words
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.draft_model import DraftModelProposer, load_draft_proposer
from triode.engine.spec_decode.ngram import NgramProposer
from triode.engine.step_isolation import StepResult, describe, run_isolating
from triode.engine.structured.compiler import GrammarCompiler
from triode.engine.structured.manager import StepMasks, StructuredOutputManager
from triode.streaming.delta import RequestDelta

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        from transformers import AutoTokenizer

        self.config = config = config or EngineConfig()
        files = resolve_model(config.model, config.cache_dir)
        self.model_name = config.served_model_name or files.name
        self.model_folder = files.folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(files.folder))
        self.runner = ModelRunner(config, files.folder)
        max_positions = self.runner.max_position_embeddings
        self.max_model_len = min(
            config.max_model_len or max_positions,
            max_positions,
            self.runner.num_blocks * config.block_size,
        )
        self.scheduler = Scheduler(config, self.runner.num_blocks, self.max_model_len)
        self.outputs = OutputProcessor(self.tokenizer)
        self.vocab_size: int = self.runner.vocab_size
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        # Only ids the logits have: they become stop_token_ids, which the sampler indexes.
        self._extra_eos_ids = {
            t for t in self._generation_eos_ids() - {self.eos_token_id} if 0 <= t < self.vocab_size
        }
        eos_ids = self._extra_eos_ids | ({self.eos_token_id} - {None})
        self.model_info = ModelInfo(
            name=self.model_name,
            folder=str(self.model_folder),
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            eos_token_ids=tuple(sorted(eos_ids)),  # type: ignore[arg-type]
            weights=self.runner.weights_info.as_dict(),
        )
        self.structured = StructuredOutputManager(
            GrammarCompiler(self.tokenizer, self.vocab_size, list(self.model_info.eos_token_ids))
        )
        # Consecutive steps that failed for a reason no request explains (see `step`); the
        # async engine declares the engine dead after a few.
        self.num_failed_steps = 0
        self.last_error: str | None = None
        self.invariant_checker: KVInvariantChecker | None = None
        # Cumulative seconds per phase of `step` outside the runner (for profiling).
        self.step_timings: dict[str, float] = {}
        self.thread_policy = self._make_thread_policy(config)
        self.speculative_config: SpeculativeConfig | None = config.speculative
        self.proposer: NgramProposer | DraftModelProposer | None = None
        # A draft model's q for this step's drafts, by request id (for the runner).
        self._draft_probs: dict[str, torch.Tensor] = {}
        spec = self.speculative_config
        if spec is not None and spec.method == "draft_model":
            self.proposer = load_draft_proposer(
                config,
                spec,
                self.tokenizer,
                self.vocab_size,
                self.max_model_len,
                self.runner.num_blocks,
            )
        elif spec is not None:
            self.proposer = NgramProposer(
                spec.prompt_lookup_min, spec.prompt_lookup_max, spec.num_speculative_tokens
            )

    def _make_thread_policy(self, config: EngineConfig) -> ThreadPolicy | None:
        """Adapt torch's threads to the free cores, unless the user fixed them (--num-threads)
        or the model is not on the CPU."""
        if config.num_threads or not config.adapt_threads or self.runner.device.type != "cpu":
            return None
        import torch

        return ThreadPolicy(torch.get_num_threads())

    def _generation_eos_ids(self) -> set[int]:
        eos = getattr(self.runner.hf_config, "eos_token_id", None)
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(str(self.model_folder)).eos_token_id
        except (OSError, ValueError):
            pass
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list) else {eos}

    def enable_invariant_checks(self) -> KVInvariantChecker:
        """Check the scheduler's and the KV cache's invariants around every step (for tests
        and debugging: it walks every block each step). A broken invariant raises
        KVInvariantError out of `step`."""
        self.invariant_checker = KVInvariantChecker(self.scheduler)
        return self.invariant_checker

    # ---- requests ---------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        """Check a request against the model (InvalidRequestError / ContextLengthError) and
        queue it. Offline callers only: this tokenizes bad words and compiles a constraint here
        (the server's input processor does both in its worker threads)."""
        params = resolve_bad_words(self.tokenizer, params)
        engine_input = make_engine_input(self.model_info, prompt_token_ids, params, priority)
        if params.structured_outputs is not None:
            self.structured.compile(params.structured_outputs)  # cached; names the field
        self.add_input(request_id, engine_input, arrival_time)

    def add_input(
        self, request_id: str, engine_input: EngineInput, arrival_time: float | None = None
    ) -> None:
        """Queue a request already checked by `make_engine_input` (no second check)."""
        if request_id in self.scheduler.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params = engine_input.params
        if self._extra_eos_ids and not params.ignore_eos:
            params = params.clone(
                stop_token_ids=[*params.stop_token_ids, *sorted(self._extra_eos_ids)]
            )
        request = Request(
            request_id=request_id,
            prompt_token_ids=engine_input.prompt_token_ids,
            sampling_params=params,
            max_tokens=engine_input.max_tokens,
            eos_token_id=self.eos_token_id,
            priority=engine_input.priority,
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
        )
        self.scheduler.add_request(request)
        if params.structured_outputs is not None:
            # Compiled (from the cache, normally) when the step first needs its mask, in the
            # step's thread: never here, which may be the event loop.
            self.structured.add_request(request_id, params.structured_outputs)

    def _samples_of(self, group_ids: list[str]) -> list[str]:
        wanted = set(group_ids)
        return [rid for rid, r in self.scheduler.requests.items() if r.group_id in wanted]

    def abort(self, request_ids: list[str]) -> list[RequestDelta]:
        """Abort requests (by the id given to add_request: all their samples). Their blocks go
        back to the pool at once."""
        deltas = self._finish(self._samples_of(request_ids), RequestStatus.FINISHED_ABORTED)
        for delta in deltas:
            logger.debug(
                "aborted request %s (sample %d) after %d output tokens",
                delta.request_id,
                delta.index,
                delta.num_output_tokens,
            )
        return deltas

    def fail(self, request_ids: list[str], message: str) -> list[RequestDelta]:
        deltas = self._finish(self._samples_of(request_ids), RequestStatus.FINISHED_ERROR)
        for delta in deltas:
            delta.error = message
        return deltas

    def _finish(self, sample_ids: list[str], status: RequestStatus) -> list[RequestDelta]:
        finished = self.scheduler.finish_requests(sample_ids, status)
        if isinstance(self.proposer, DraftModelProposer):
            self.proposer.release(self.scheduler.requests)
        return [self.outputs.finish(r) for r in finished]

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """One engine step: schedule -> run -> update. Returns the deltas it produced.

        A step that raises fails only the requests that make it raise (step_isolation.py);
        the others get their tokens as usual. When every request of the step fails, a probe
        (one token through the model with plain greedy sampling) tells a request's fault from
        the engine's: only when the probe fails too does the step count toward
        `num_failed_steps`, the engine's death.
        """
        if self.thread_policy is not None:
            self.thread_policy.maybe_adjust()
        t0 = time.perf_counter()
        if self.proposer is not None:
            self._propose()
        tp = time.perf_counter()
        sched = self.scheduler.schedule()
        masks = self.structured.start_step(sched)  # filled while the forward pass runs
        t1 = time.perf_counter()
        if self.invariant_checker is not None:
            self.invariant_checker.before_runner_call(sched)
        result = run_isolating(lambda part: self._execute(part, masks), sched)
        deltas = self._settle_faults(sched, result) if result.error is not None else []
        t2 = time.perf_counter()
        deltas += self._reject_grammar_failures() if masks is not None else []
        updated, _ = self.scheduler.update_from_output(sched, result.output.sampled, self.outputs)
        self._draft_probs = {}
        if isinstance(self.proposer, DraftModelProposer):
            self.proposer.release(self.scheduler.requests)
        t3 = time.perf_counter()
        deltas += self.outputs.make_deltas(updated, result.output.logprobs)
        t4 = time.perf_counter()
        if self.invariant_checker is not None:
            self.invariant_checker.check()
            if isinstance(self.proposer, DraftModelProposer):
                self.proposer.check(self.scheduler.requests)
        timings = self.step_timings
        timings["propose"] = timings.get("propose", 0.0) + (tp - t0)
        timings["schedule"] = timings.get("schedule", 0.0) + (t1 - tp)
        timings["update"] = timings.get("update", 0.0) + (t3 - t2)
        timings["output"] = timings.get("output", 0.0) + (t4 - t3)
        return deltas

    def _propose(self) -> None:
        """Drafts for every running request about to decode, unless the load is high enough
        that verifying them would cost the batch more than they save (then speculation
        pauses until the load drops below the threshold again)."""
        assert self.proposer is not None and self.speculative_config is not None
        scheduler = self.scheduler
        stats = scheduler.spec_stats
        load = scheduler.num_running + scheduler.num_waiting
        proposer = self.proposer
        if load >= self.speculative_config.disable_by_batch_size:
            stats.num_steps_paused += 1
            if isinstance(proposer, DraftModelProposer):
                proposer.pause()
            return
        stats.num_steps_speculating += 1
        # NOTE: not for a request that still has a prompt chunk to compute, nor one whose
        # n samples have not forked yet, nor one that wants logprobs (one entry per step).
        candidates = [
            request
            for request in scheduler.running
            if request.num_tokens - request.num_computed_tokens == 1
            and not request.needs_fork
            and request.sampling_params.logprobs is None
            and not _is_constrained(request.sampling_params)
        ]
        if not isinstance(proposer, DraftModelProposer):
            for request in candidates:
                request.spec_token_ids = proposer.propose(request.all_token_ids)
            return
        proposals = proposer.propose(candidates, self.max_model_len)
        for request_id, proposal in proposals.items():
            scheduler.requests[request_id].spec_token_ids = proposal.token_ids
            if proposal.probs is not None:
                self._draft_probs[request_id] = proposal.probs

    def _execute(self, sched: SchedulerOutput, masks: StepMasks | None = None) -> RunnerOutput:
        """One runner call (a step, or a part of a failed one), recorded by the invariant
        checker when it is on."""
        checker = self.invariant_checker
        if checker is None:
            return self.runner.execute(sched, masks, self._draft_probs)
        try:
            output = self.runner.execute(sched, masks, self._draft_probs)
        except BaseException:
            checker.after_runner_call(sched, completed=False)
            raise
        checker.after_runner_call(sched, completed=True)
        return output

    def _settle_faults(self, sched: SchedulerOutput, result: StepResult) -> list[RequestDelta]:
        """Fail the requests whose part of the step raised; decide whose fault it was.

        NOTE: the probe runs before the faulty requests are failed, in a block one of them was
        writing this step (never shared, never in the prefix cache, its contents lost anyway):
        it moves nothing in the pool, so a failed step leaves the pool exactly as if its
        faulty requests had been failed before running (tests/engine/test_kv_properties.py).
        """
        engine_fault = len(result.faults) == len(sched.scheduled) and not self._probe_succeeds(
            sched
        )
        groups = {
            self.scheduler.requests[rid].group_id: error for rid, error in result.faults.items()
        }
        deltas = []
        for group_id, error in groups.items():
            deltas += self.fail([group_id], f"internal error while generating: {error}")
        if engine_fault:
            self.num_failed_steps += 1
            self.last_error = result.error
        else:
            self.num_failed_steps = 0
        return deltas

    def _probe_succeeds(self, sched: SchedulerOutput) -> bool:
        """Run one token with plain greedy sampling through the model: does the engine still
        work when no request's values are involved? (A step with nothing in it that raises
        is the engine's fault.)"""
        if not sched.scheduled:
            return False
        item = sched.scheduled[0]
        block_id = item.block_ids[item.start_pos // self.config.block_size]
        probe = SchedulerOutput(
            scheduled=[
                ScheduledRequest(
                    request_id="triode-probe",
                    token_ids=[0],
                    start_pos=0,
                    block_ids=[block_id],
                    sample_ids=["triode-probe"],
                    sampling_params=SamplingParams(temperature=0, max_tokens=1),
                    prompt_token_ids=[0],
                    output_token_ids=[],
                    eos_token_id=None,
                )
            ],
            num_scheduled_tokens=1,
        )
        try:
            self._execute(probe)
        except Exception as exc:
            logger.error("the engine fails with no request involved: %s", describe(exc))
            return False
        return True

    def _reject_grammar_failures(self) -> list[RequestDelta]:
        """End the samples whose grammar refused their last token (their own logit_bias,
        allowed_token_ids or bad_words left nothing it accepts) or failed to compile."""
        deltas = []
        for sample_id, message in self.structured.take_rejected().items():
            for delta in self._finish([sample_id], RequestStatus.FINISHED_ERROR):
                delta.error = message
                deltas.append(delta)
        return deltas

    def stats(self) -> SchedulerStats:
        stats = self.scheduler.stats()
        if self.speculative_config is None:
            stats.spec_decode = None
        return stats


def _is_constrained(params: SamplingParams) -> bool:
    """Whether a request's tokens are shaped by more than the sampler's plain row transforms
    (a grammar, logit_bias, allowed_token_ids, bad words). NOTE: such requests do not speculate:
    verifying drafts would need the grammar advanced through each draft and the logit controls
    applied per verification row; both are left for later (README: speculative decoding)."""
    return (
        params.structured_outputs is not None
        or bool(params.logit_bias)
        or params.allowed_token_ids is not None
        or bool(params.bad_words_token_ids)
    )
