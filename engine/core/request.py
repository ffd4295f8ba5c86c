"""Request: one sequence the engine is generating, and its lifecycle.

A request with `n > 1` starts as one sequence (index 0) that computes the prompt once; when its
first tokens are sampled the scheduler forks it into `n` sequences sharing the prompt's blocks.
All of them carry the same `group_id`, the id the caller knows.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from triode.engine.sampling.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(slots=True, eq=False)
class Request:
    """The engine's state for one sequence. Mutated only by the scheduler and the KV manager."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int  # resolved: never None, never past the context length
    eos_token_id: int | None = None
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    group_id: str = ""
    index: int = 0

    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    # Physical KV blocks, in logical order; maintained by the KV-cache manager.
    block_ids: list[int] = field(default_factory=list)
    # Besides the tokens, what changes this request's K/V (e.g. a LoRA adapter's identity, a
    # tenant's cache salt): part of every block digest, so such requests share no blocks.
    cache_extra_keys: tuple[str | bytes | int, ...] = ()
    # Chained digests of the request's full blocks (prefix caching; memoized).
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_tokens: int = -1  # prompt tokens served by the prefix cache; -1 until scheduled
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    # Proposed next tokens (speculative decoding) for the next step to verify; not part of
    # all_token_ids until the model accepts them. Set by the engine, consumed by schedule().
    spec_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.group_id:
            self.group_id = self.request_id
        if not self.all_token_ids:
            self.all_token_ids = [*self.prompt_token_ids, *self.output_token_ids]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def needs_fork(self) -> bool:
        """True while an n>1 request has not sampled its first tokens yet."""
        return self.sampling_params.n > 1 and self.index == 0 and not self.output_token_ids

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def fork(self, request_id: str, index: int) -> Request:
        """A sibling sample sharing everything computed so far (blocks are shared by the caller)."""
        child = Request(
            request_id=request_id,
            prompt_token_ids=self.prompt_token_ids,
            sampling_params=self.sampling_params,
            max_tokens=self.max_tokens,
            eos_token_id=self.eos_token_id,
            priority=self.priority,
            arrival_time=self.arrival_time,
            group_id=self.group_id,
            index=index,
            output_token_ids=list(self.output_token_ids),
            cache_extra_keys=self.cache_extra_keys,
        )
        child.status = self.status
        child.num_computed_tokens = self.num_computed_tokens
        child.block_hashes = list(self.block_hashes)
        child.num_cached_tokens = self.num_cached_tokens
        child.first_scheduled_time = self.first_scheduled_time
        return child


def sample_request_id(group_id: str, index: int) -> str:
    """The id of sample `index` of an n>1 request (sample 0 keeps the group's id)."""
    return group_id if index == 0 else f"{group_id}#{index}"
