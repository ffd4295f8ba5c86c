from __future__ import annotations

import itertools

from triode.engine.config import EngineConfig
from triode.engine.core.request import Request
from triode.engine.core.scheduler import Scheduler
from triode.engine.sampling.sampling_params import SamplingParams

_clock = itertools.count()
_token_base = itertools.count(1)


def make_request(
    request_id: str,
    prompt: int | list[int],
    max_tokens: int = 16,
    priority: int = 0,
    n: int = 1,
    arrival: float | None = None,
) -> Request:
    if isinstance(prompt, int):  # distinct tokens per request: no accidental prefix hits
        base = 1000 * next(_token_base)
        tokens = list(range(base, base + prompt))
    else:
        tokens = list(prompt)
    return Request(
        request_id=request_id,
        prompt_token_ids=tokens,
        sampling_params=SamplingParams(max_tokens=max_tokens, n=n, temperature=0),
        max_tokens=max_tokens,
        eos_token_id=2,
        priority=priority,
        arrival_time=float(next(_clock)) if arrival is None else arrival,
    )


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_batched_tokens: int = 32,
    max_num_seqs: int = 8,
    enable_prefix_caching: bool = True,
    max_model_len: int = 1024,
) -> Scheduler:
    config = EngineConfig(
        block_size=block_size,
        num_kv_blocks=num_blocks,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        enable_prefix_caching=enable_prefix_caching,
    )
    return Scheduler(config, num_blocks, max_model_len)


def run_step(scheduler: Scheduler, token: int = 7):
    """Schedule one step and pretend the model sampled `token` for every sampling row."""
    out = scheduler.schedule()
    sampled = {sid: token for item in out.scheduled for sid in item.sample_ids}
    updated, finished = scheduler.update_from_output(out, sampled)
    return out, updated, finished


def generate_speculating(llm, prompts: list[list[int]], params: list[SamplingParams], speculate):
    """`llm.generate` with the engine's proposer on or off, from an empty prefix cache:
    [(token ids, text, finish reason)] per prompt."""
    engine = llm.engine
    proposer = engine.proposer
    if not speculate:
        engine.proposer = None
    try:
        engine.scheduler.kv.reset_prefix_cache()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        engine.proposer = proposer
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]


def assert_outcomes_match_alone(requests, outcomes, want) -> None:
    """Each request's tokens and finish reasons equal its run alone (`want`); an aborted
    request's tokens are a prefix of them."""
    for req, outcome in zip(requests, outcomes.values()):
        if req.abort_after is None:
            assert outcome.tokens == want[req].tokens, req
            assert outcome.finish_reasons == want[req].finish_reasons, req
            continue
        for index, tokens in outcome.tokens.items():
            assert tokens == want[req].tokens[index][: len(tokens)], req
