"""RequestDelta: what one engine step produced for one sample of one request.

Deltas of the same sample merge (`merge`) when the consumer lags, so a slow reader gets one
bigger delta instead of stalling the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class RequestDelta:
    request_id: str  # the id the caller gave (shared by the n samples)
    index: int  # which sample (0..n-1)
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # cumulative for this sample
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    queue_time_s: float | None = None  # on the first delta: arrival to first scheduled

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def merge(self, later: RequestDelta) -> None:
        """Fold a later delta of the same sample into this one."""
        assert later.request_id == self.request_id and later.index == self.index
        assert self.finish_reason is None, "nothing follows a finished delta"
        self.text += later.text
        self.token_ids.extend(later.token_ids)
        if later.logprobs is not None:
            self.logprobs = (self.logprobs or []) + later.logprobs
        self.finish_reason = later.finish_reason
        self.stop_reason = later.stop_reason
        self.error = later.error
        self.num_prompt_tokens = later.num_prompt_tokens
        self.num_output_tokens = later.num_output_tokens
        self.num_cached_tokens = later.num_cached_tokens
        if self.queue_time_s is None:
            self.queue_time_s = later.queue_time_s
