"""StructuredOutputManager: one grammar matcher per constrained sample, and each step's bitmask.

Per step (`start_step`), for every constrained row about to be sampled, a background thread
first feeds the matcher the tokens sampled since it last ran, then fills that row of a token
bitmask (llguidance: one bit per vocabulary id, 32 per int32 word; it drops the GIL and fills
many rows in parallel). It runs while the model's forward pass does, so the mask is usually
ready before the logits are; the runner `wait`s for it right before sampling.

A finished grammar allows only EOS, so the request ends with "stop" on the next token. A
matcher that refuses a sampled token (possible only when the request's own logit_bias,
allowed_token_ids or bad_words leave no token the grammar accepts) is reported by
`take_rejected`, and the engine ends that request with an error.

Requests register their constraint (`add_request`, cheap: it may run on the event loop); the
matcher is made from the compile cache when the request is first sampled, in the step's
thread. The input processor compiled it already to validate the request, so that is a cache
hit unless the cache evicted it meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from triode.engine.core.scheduler import SchedulerOutput
from triode.engine.errors import InvalidRequestError
from triode.engine.sampling.structured_outputs import StructuredOutputsParams
from triode.engine.structured.compiler import GrammarCompiler


@dataclass(slots=True)
class _SampleMatcher:
    matcher: Any  # llguidance.LLMatcher, this sample's own copy
    num_consumed: int = 0  # output tokens fed to the matcher so far


@dataclass(slots=True)
class MaskStats:
    """Cumulative seconds: filling masks (in the mask thread) and the step waiting for them
    (ideally ~0: the fill hides behind the forward pass)."""

    fill_s: float = 0.0
    wait_s: float = 0.0
    num_rows: int = 0

    def reset(self) -> None:
        self.fill_s = self.wait_s = 0.0
        self.num_rows = 0


class StepMasks:
    """The bitmask rows of one step, being filled in the background."""

    def __init__(
        self,
        sample_ids: list[str],
        bitmask: torch.Tensor,
        future: concurrent.futures.Future[None],
        stats: MaskStats,
    ) -> None:
        self.sample_ids = sample_ids  # row i of the bitmask belongs to sample_ids[i]
        self._bitmask = bitmask
        self._future = future
        self._stats = stats

    def wait(self) -> torch.Tensor:
        """The filled bitmask [len(sample_ids), words] (int32, CPU)."""
        if not self._future.done():
            start = time.perf_counter()
            self._future.result()
            self._stats.wait_s += time.perf_counter() - start
        self._future.result()
        return self._bitmask

    @property
    def is_done(self) -> bool:
        return self._future.done()


_REFUSED = (
    "the output could not continue within its structured-output constraint: the request's "
    "logit_bias, allowed_token_ids or bad_words exclude every token the grammar allows"
)


class StructuredOutputManager:
    def __init__(self, compiler: GrammarCompiler) -> None:
        self.compiler = compiler
        self._specs: dict[str, StructuredOutputsParams] = {}  # group id -> its constraint
        self._samples: dict[str, _SampleMatcher] = {}
        self._rejected: dict[str, str] = {}  # sample id -> why it cannot go on
        self._pending: StepMasks | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor: Any = None  # llguidance.LLExecutor (its own thread pool)
        self._buffer = torch.empty(0, dtype=torch.int32)
        self.stats = MaskStats()

    @property
    def num_tracked(self) -> int:
        return len(self._specs) + len(self._samples)

    def compile(self, spec: StructuredOutputsParams, param: str | None = None) -> None:
        """Compile (or find cached) `spec`; raises InvalidRequestError naming `param`."""
        self.compiler.compile(spec, param)

    def add_request(self, group_id: str, spec: StructuredOutputsParams) -> None:
        """Register a constrained request (all its samples share the compiled template)."""
        self._specs[group_id] = spec

    def remove(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._specs.pop(request_id, None)
            self._samples.pop(request_id, None)

    def take_rejected(self) -> dict[str, str]:
        """Samples that cannot go on, with the reason (reported once)."""
        rejected, self._rejected = self._rejected, {}
        return rejected

    def start_step(self, sched: SchedulerOutput) -> StepMasks | None:
        """Start filling this step's masks; None when no scheduled row is constrained."""
        self._finish_pending()
        if sched.finished_request_ids:
            self.remove(sched.finished_request_ids)
        if not self._specs and not self._samples:
            return None
        rows: list[tuple[str, _SampleMatcher, list[int]]] = []
        for item in sched.scheduled:
            if not item.sample_ids or item.sampling_params.structured_outputs is None:
                continue
            for sample_id in item.sample_ids:
                state = self._samples.get(sample_id) or self._new_sample(sample_id, item.request_id)
                if state is None:
                    continue
                # A fork's children start from the parent's state: nothing consumed yet.
                pending = item.output_token_ids[state.num_consumed :]
                rows.append((sample_id, state, list(pending)))
        if not rows:
            return None
        words = (self.compiler.ll_tokenizer.vocab_size + 31) // 32
        if self._buffer.shape[0] < len(rows) or self._buffer.shape[1] != words:
            self._buffer = torch.empty(max(len(rows), 8), words, dtype=torch.int32)
        bitmask = self._buffer[: len(rows)]
        future = self._pool().submit(self._fill, rows, bitmask)
        self._pending = StepMasks([r[0] for r in rows], bitmask, future, self.stats)
        return self._pending

    def _new_sample(self, sample_id: str, request_id: str) -> _SampleMatcher | None:
        # A sample's first row is its request's first sampling (an n>1 request forks there,
        # and every sample starts from the template).
        spec = self._specs.get(request_id)
        if spec is None:
            return None
        try:
            template = self.compiler.compile(spec)
        except InvalidRequestError as exc:  # validated before; only a changed cache could
            self._rejected[sample_id] = str(exc)
            return None
        state = _SampleMatcher(template.deep_copy())
        self._samples[sample_id] = state
        return state

    def _fill(
        self, rows: list[tuple[str, _SampleMatcher, list[int]]], bitmask: torch.Tensor
    ) -> None:
        """Runs in the mask thread, concurrently with the forward pass."""
        start = time.perf_counter()
        for sample_id, state, pending in rows:
            if pending:
                if not state.matcher.consume_tokens(pending):
                    self._rejected[sample_id] = _REFUSED
                state.num_consumed += len(pending)
        matchers = [(state.matcher, i) for i, (_, state, _) in enumerate(rows)]
        words = bitmask.shape[1]
        self._llg_executor().unsafe_compute_mask_ptr(
            matchers, bitmask.data_ptr(), words * 4, bitmask.shape[0]
        )
        self.stats.fill_s += time.perf_counter() - start
        self.stats.num_rows += len(rows)

    def _finish_pending(self) -> None:
        """Wait for the previous step's job (normally long done) before touching matchers."""
        if self._pending is not None:
            # If it raised, its step failed too (the runner waited on it); start afresh.
            with contextlib.suppress(Exception):
                self._pending.wait()
            self._pending = None

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "triode-grammar-masks")
        return self._thread

    def _llg_executor(self) -> Any:
        if self._executor is None:
            from llguidance import LLExecutor

            self._executor = LLExecutor()
        return self._executor

    def close(self) -> None:
        self._finish_pending()
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
