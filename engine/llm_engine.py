"""LLMEngine: the synchronous engine. add_request / step / abort; no threads, no I/O.

`step()` is schedule -> run -> postprocess, and returns the text deltas the step produced.
The trio actor (engine.async_engine) and the offline LLM API both drive this class.
"""

from __future__ import annotations

import logging
import time

from triode.engine.config import EngineConfig
from triode.engine.core.request import Request, RequestStatus
from triode.engine.core.scheduler import Scheduler, SchedulerStats
from triode.engine.errors import InvalidRequestError
from triode.engine.inputs import EngineInput, ModelInfo, make_engine_input
from triode.engine.models.loader import resolve_model
from triode.engine.output_processor import OutputProcessor
from triode.engine.runner.model_runner import ModelRunner
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.thread_policy import ThreadPolicy
from triode.streaming.delta import RequestDelta

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
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        self._extra_eos_ids = self._generation_eos_ids() - {self.eos_token_id}
        eos_ids = self._extra_eos_ids | ({self.eos_token_id} - {None})
        self.model_info = ModelInfo(
            name=self.model_name,
            folder=str(self.model_folder),
            max_model_len=self.max_model_len,
            vocab_size=self.runner.vocab_size,
            eos_token_ids=tuple(sorted(eos_ids)),  # type: ignore[arg-type]
        )
        self.num_failed_steps = 0
        self.last_error: str | None = None
        # Cumulative seconds per phase of `step` outside the runner (for profiling).
        self.step_timings: dict[str, float] = {}
        self.thread_policy = self._make_thread_policy(config)

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
        queue it."""
        engine_input = make_engine_input(self.model_info, prompt_token_ids, params, priority)
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

    def _samples_of(self, group_ids: list[str]) -> list[str]:
        wanted = set(group_ids)
        return [rid for rid, r in self.scheduler.requests.items() if r.group_id in wanted]

    def abort(self, request_ids: list[str]) -> list[RequestDelta]:
        """Abort requests (by the id given to add_request: all their samples). Their blocks go
        back to the pool at once."""
        return self._finish(self._samples_of(request_ids), RequestStatus.FINISHED_ABORTED)

    def fail(self, request_ids: list[str], message: str) -> list[RequestDelta]:
        deltas = self._finish(self._samples_of(request_ids), RequestStatus.FINISHED_ERROR)
        for delta in deltas:
            delta.error = message
        return deltas

    def _finish(self, sample_ids: list[str], status: RequestStatus) -> list[RequestDelta]:
        finished = self.scheduler.finish_requests(sample_ids, status)
        return [self.outputs.finish(r) for r in finished]

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        if self.thread_policy is not None:
            self.thread_policy.maybe_adjust()
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        t1 = time.perf_counter()
        try:
            result = self.runner.execute(sched)
        except Exception as exc:  # a broken step fails its requests, not the engine
            logger.exception("engine step failed")
            self.num_failed_steps += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            ids = list({self.scheduler.requests[s.request_id].group_id for s in sched.scheduled})
            return self.fail(ids, f"internal error while generating: {self.last_error}")
        self.num_failed_steps = 0
        t2 = time.perf_counter()
        updated, _ = self.scheduler.update_from_output(sched, result.sampled)
        t3 = time.perf_counter()
        deltas, stopped = self.outputs.process(updated, result.logprobs)
        if stopped:
            self.scheduler.finish_requests(
                [r.request_id for r in stopped], RequestStatus.FINISHED_STOPPED
            )
        t4 = time.perf_counter()
        timings = self.step_timings
        timings["schedule"] = timings.get("schedule", 0.0) + (t1 - t0)
        timings["update"] = timings.get("update", 0.0) + (t3 - t2)
        timings["output"] = timings.get("output", 0.0) + (t4 - t3)
        return deltas

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()
