"""StepBudget: one step's token budget, and its cap on prompt tokens while requests decode.

Every running request that decodes waits for the whole step, so the prompt chunks a step
carries are paid by each decoding stream as a longer gap between two tokens (measured on the
bundled model, 2 cores, fused step: 16 decodes take 16 ms; with 64 prompt tokens beside them
34 ms, with 2 x 100 66 ms). When a few new requests arrive beside running streams, as when a
batch of equal-length requests finishes together and the clients send the next ones, one step
full of their prompts is the longest gap those streams see (the fixed workload's ITL p99).

NOTE (the cap chosen): while at least one request is decoding, a step takes at most
max(`min_prefill_tokens`, `prefill_tokens_per_request` x unfinished requests (running or
waiting), queued prompt tokens / QUEUE_DRAIN_STEPS) prompt tokens. So
- a few arrivals beside many streams are prefilled in small chunks over a few steps, each
  step only a little slower than a decode-only one (17 requests at 2 per request: 34 tokens,
  a 100-token prompt in 3 steps). Served, 2 per request against 4 (BENCHMARKS.md, issue 13,
  after prompt chunks joined the fused step): fixed workload 1.04-1.07x the throughput and
  ITL p99 61-63 vs 82 ms; mixed workload 1.03x. (Before, with prompt steps on the module path,
  2 per request cost 11% of the fixed workload's throughput, and the default was 4.)
- a long queue of prompts (128 requests at once) still gets the whole `max_num_batched_tokens`
  (its tokens / 8 exceed it): what those requests wait for is the prefill, and throttling it
  would delay more users than it spares; the same term spreads a clump of arrivals over at
  most 8 steps, so their first tokens do not wait behind many small steps;
- with no decode in the step the cap does not apply (nobody's next token waits for it).
A cap in prompt tokens, not in time: a step's cost grows with its prompt tokens about
linearly at these sizes, so a count keeps that step's length, which is what the streams feel,
where it was measured. The floor keeps a chunk worth a step's fixed cost when very few
requests run. Candidates measured against it (a flat cap per unfinished request alone, a
lift while more requests wait than decode): BENCHMARKS.md.
Prompts are still chunked, decodes still go first (running requests are scheduled before
waiting ones, and none mid-prompt is ahead of a decoding one), priorities and preemption are
unchanged; `prefill_tokens_per_request = 0` turns the cap off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# NOTE: the cap never makes the queue of prompts last more than this many steps (a long
# queue, as 128 requests at once, gets the whole budget; a clump of arrivals is spread).
QUEUE_DRAIN_STEPS = 8


def prefill_cap(
    tokens_per_request: float,
    min_tokens: int,
    num_unfinished: int,
    num_decoding: int,
    num_queued_tokens: int,
) -> int | None:
    """The prompt tokens a step may carry, or None for no cap (off, or nothing decoding).
    `num_queued_tokens`: the prompt tokens still to compute, waiting or mid-prompt."""
    if tokens_per_request <= 0 or num_decoding == 0:
        return None
    return max(
        min_tokens,
        math.ceil(tokens_per_request * num_unfinished),
        math.ceil(num_queued_tokens / QUEUE_DRAIN_STEPS),
    )


@dataclass(slots=True)
class StepBudget:
    """The tokens one step may still take, and (when capped) the prompt tokens.

    A prompt token is any token of a request that has more than one token left to compute
    (a prompt chunk, or a preempted request's recompute); a decode is the one token (plus its
    drafts) of a request that has one left. Unscheduling a request gives back both."""

    tokens: int
    prefill: int | None = None  # None: prompt tokens limited only by `tokens`
    _prefill_by_id: dict[str, int] = field(default_factory=dict)

    def prefill_room(self) -> int:
        """Prompt tokens the step can still take."""
        return self.tokens if self.prefill is None else min(self.tokens, self.prefill)

    def take(self, request_id: str, num_tokens: int, num_prefill: int) -> None:
        assert 0 <= num_prefill <= num_tokens <= self.tokens
        self.tokens -= num_tokens
        if num_prefill:
            self._prefill_by_id[request_id] = num_prefill
            if self.prefill is not None:
                assert num_prefill <= self.prefill
                self.prefill -= num_prefill

    def give_back(self, request_id: str, num_tokens: int) -> None:
        self.tokens += num_tokens
        num_prefill = self._prefill_by_id.pop(request_id, 0)
        if self.prefill is not None:
            self.prefill += num_prefill
