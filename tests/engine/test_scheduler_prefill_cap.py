"""The prompt-token cap of steps that carry decodes (engine/core/step_budget.py): against a
simple reference scheduler, under random arrivals, aborts, priorities and preemption, and on
the real engine (the same greedy tokens with the cap on and off)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.engine.helpers import make_request, make_scheduler, run_step
from triode.engine import LLM, SamplingParams
from triode.engine.core.request import RequestStatus
from triode.engine.core.scheduler import Scheduler

DRAIN_STEPS = 8  # the cap never stretches the queue of prompts beyond this many steps


def capped_scheduler(ratio: float, min_tokens: int, **kwargs) -> Scheduler:
    s = make_scheduler(**kwargs)
    s.config.prefill_tokens_per_request = ratio
    s.config.min_prefill_tokens = min_tokens
    return s


def left(request) -> int:
    return request.num_tokens - request.num_computed_tokens


def reference_cap(s: Scheduler) -> int | None:
    """The documented cap, from the state before the step: None when off or nothing
    decodes; else max(floor, ratio x unfinished, queued prompt tokens / 8), leaving room
    for every decode."""
    ratio, floor = s.config.prefill_tokens_per_request, s.config.min_prefill_tokens
    waiting = s.waiting_requests()
    num_decoding = sum(1 for r in s.running if left(r) == 1)
    if ratio == 0 or num_decoding == 0:
        return None
    queued = sum(left(r) for r in s.running if left(r) > 1) + sum(left(r) for r in waiting)
    unfinished = len(s.running) + len(waiting)
    cap = max(floor, math.ceil(ratio * unfinished), math.ceil(queued / DRAIN_STEPS))
    return min(cap, max(s.config.max_num_batched_tokens - num_decoding, 0))


def reference_schedule(s: Scheduler) -> list[tuple[str, int]]:
    """What a step takes when nothing is preempted and nothing is in the prefix cache:
    running requests in order (a decode's one token; a prompt chunk within the budget and the
    cap), then waiting ones in arrival order while the batch has seats."""
    tokens = s.config.max_num_batched_tokens
    cap = reference_cap(s)
    prefill = tokens if cap is None else cap
    want = []
    for r in s.running:
        n = min(1, tokens) if left(r) == 1 else min(left(r), tokens, prefill)
        if n > 0:
            want.append((r.request_id, n))
            tokens -= n
            if left(r) > 1:
                prefill -= n
    seats = s.config.max_num_seqs - len(s.running)
    for r in sorted(s.waiting_requests(), key=lambda r: r.arrival_time):
        n = min(left(r), tokens, prefill)
        if n <= 0 or seats <= 0:
            break
        want.append((r.request_id, n))
        tokens, prefill, seats = tokens - n, prefill - n, seats - 1
    return want


# An operation: add a request (prompt length, max tokens, priority), step, or abort the
# k-th live request.
add_op = st.tuples(st.just("add"), st.integers(1, 70), st.integers(1, 12), st.integers(0, 2))
step_op = st.tuples(st.just("step"))
abort_op = st.tuples(st.just("abort"), st.integers(0, 20))
ops_strategy = st.lists(
    st.one_of(add_op, add_op, step_op, step_op, step_op, abort_op), min_size=10, max_size=60
)
config_strategy = st.fixed_dictionaries(
    {
        "ratio": st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]),
        "min_tokens": st.integers(1, 8),
        "max_num_batched_tokens": st.integers(8, 96),
        "max_num_seqs": st.integers(1, 10),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy, ops=ops_strategy)
def test_each_step_matches_the_reference_scheduler(config, ops):
    s = capped_scheduler(
        config["ratio"],
        config["min_tokens"],
        num_blocks=1024,
        max_num_batched_tokens=config["max_num_batched_tokens"],
        max_num_seqs=config["max_num_seqs"],
        enable_prefix_caching=False,
    )
    names = iter(range(10**6))
    has_bound = False
    for op in ops:
        if op[0] == "add":
            s.add_request(make_request(f"r{next(names)}", op[1], max_tokens=op[2]))
        elif op[0] == "abort" and s.requests:
            victim = sorted(s.requests)[op[1] % len(s.requests)]
            s.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
        else:
            want = reference_schedule(s)
            cap = reference_cap(s)
            num_prompt = sum(n for rid, n in want if left(s.requests[rid]) > 1)
            out, _, _ = run_step(s)
            assert [(i.request_id, len(i.token_ids)) for i in out.scheduled] == want
            has_bound = has_bound or (cap is not None and 0 < num_prompt == cap)
            assert not out.preempted_request_ids
    event(f"the cap bound a step: {has_bound}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy, ops=ops_strategy, num_blocks=st.integers(8, 40))
def test_cap_budget_and_progress_under_preemption_and_priorities(config, ops, num_blocks):
    """Tight KV (preemption), priorities, shared prefixes: every step stays within the
    budget; a step that carries a decode carries at most the cap in prompt tokens; and once
    arrivals stop, every request runs to its max_tokens (nobody starves) with every block back."""
    s = capped_scheduler(
        config["ratio"],
        config["min_tokens"],
        num_blocks=num_blocks,
        max_num_batched_tokens=config["max_num_batched_tokens"],
        max_num_seqs=config["max_num_seqs"],
    )
    shared = list(range(5000, 5040))  # prompts share prefixes: prefix-cache hits
    added = {}
    names = iter(range(10**6))

    num_idle = 0  # consecutive steps that scheduled nothing while requests were unfinished

    def step() -> None:
        nonlocal num_idle
        cap = reference_cap(s)
        decoding = {r.request_id: r.num_computed_tokens for r in s.running if left(r) == 1}
        had_work = s.has_unfinished_requests()
        out, _, _ = run_step(s)
        # (one empty step can happen: a request that preempts itself)
        num_idle = num_idle + 1 if had_work and not out.scheduled else 0
        assert num_idle < 2, "a step with unfinished requests scheduled nothing: a stall"
        sizes = [len(i.token_ids) for i in out.scheduled]
        assert out.num_scheduled_tokens == sum(sizes) <= s.config.max_num_batched_tokens
        is_decode = [
            decoding.get(i.request_id) == i.start_pos and len(i.token_ids) == 1
            for i in out.scheduled
        ]
        if any(is_decode) and s.config.prefill_tokens_per_request > 0:
            prompt = sum(n for n, d in zip(sizes, is_decode, strict=True) if not d)
            assert cap is not None and prompt <= cap

    for op in ops:
        if op[0] == "add":
            rid = f"r{next(names)}"
            prompt = shared[: op[1] // 2] + make_request("x", op[1] - op[1] // 2).prompt_token_ids
            request = make_request(rid, prompt, max_tokens=op[2], priority=op[3])
            if math.ceil((op[1] + op[2]) / 4) <= num_blocks:  # fits the pool on its own
                s.add_request(request)
                added[rid] = request
        elif op[0] == "abort" and s.requests:
            victim = sorted(s.requests)[op[1] % len(s.requests)]
            s.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
        else:
            step()
    for _ in range(2000):
        if not s.has_unfinished_requests():
            break
        step()
    assert not s.has_unfinished_requests()
    for request in added.values():
        if request.status != RequestStatus.FINISHED_ABORTED:
            assert request.status == RequestStatus.FINISHED_LENGTH
            assert request.num_output_tokens == request.max_tokens
    assert s.kv.num_free_blocks == s.kv.num_blocks
    event(f"preempted: {s.num_preemptions > 0}")


def steps_of(out) -> dict[str, int]:
    return {item.request_id: len(item.token_ids) for item in out.scheduled}


def test_an_arrival_beside_many_streams_is_prefilled_in_small_chunks():
    """The fixed workload's shape: 16 streams decoding, one 100-token prompt arrives."""
    s = capped_scheduler(2.0, 32, num_blocks=1024, max_num_batched_tokens=512, max_num_seqs=32)
    for i in range(16):
        s.add_request(make_request(f"s{i}", 100, max_tokens=64))
    run_step(s)  # 1600 tokens of prompts, no decode yet: the whole budget, 512
    for _ in range(40):
        if not s.num_waiting and all(left(r) == 1 for r in s.running):
            break
        run_step(s)
    s.add_request(make_request("new", 100, max_tokens=4))
    chunks = []
    while s.requests["new"].num_output_tokens == 0 and len(chunks) < 10:
        out, _, _ = run_step(s)
        assert sum(1 for n in steps_of(out).values() if n == 1) >= 16  # every stream decodes
        chunks.append(steps_of(out).get("new", 0))
    assert chunks == [34, 34, 32]  # 2 x 17 unfinished requests


def test_a_long_queue_of_prompts_gets_the_whole_budget():
    """The mixed workload's shape: a few streams decode while many prompts wait."""
    s = capped_scheduler(2.0, 32, num_blocks=4096, max_num_batched_tokens=512, max_num_seqs=64)
    s.add_request(make_request("first", 8, max_tokens=200))
    run_step(s)
    for i in range(40):
        s.add_request(make_request(f"w{i}", 300, max_tokens=8))
    out, _, _ = run_step(s)
    assert out.num_scheduled_tokens == 512 and steps_of(out)["first"] == 1


def test_zero_turns_the_cap_off():
    s = capped_scheduler(0.0, 32, num_blocks=1024, max_num_batched_tokens=512, max_num_seqs=32)
    s.add_request(make_request("a", 8, max_tokens=10))
    run_step(s)
    s.add_request(make_request("b", 300, max_tokens=2))
    out, _, _ = run_step(s)
    assert steps_of(out) == {"a": 1, "b": 300}


def run_staggered(llm, ratio: float) -> tuple[dict[str, list[int]], int]:
    """Requests that arrive while others decode, through the real engine: each one's greedy
    tokens, and the number of steps taken."""
    engine = llm.engine
    engine.config.prefill_tokens_per_request = ratio
    engine.scheduler.kv.reset_prefix_cache()
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    arrivals = {0: [9, 23], 2: [47, 5], 3: [61], 6: [30, 12]}  # step -> prompt lengths
    tokens: dict[str, list[int]] = {}
    num_steps = 0
    while (num_steps <= max(arrivals) or engine.has_unfinished_requests()) and num_steps < 300:
        for length in arrivals.get(num_steps, []):
            rid = f"p{len(tokens)}"
            tokens[rid] = []
            engine.add_request(
                rid, [(97 * length + 13 * i) % 900 + 5 for i in range(length)], params
            )
        for delta in engine.step():
            tokens[delta.request_id] += delta.token_ids
        num_steps += 1
    return tokens, num_steps


def test_the_cap_changes_the_batching_not_the_tokens(tiny_folder):
    """Greedy tokens with a tight cap equal those with no cap, on the real engine; the cap
    did shape the steps (more of them)."""
    llm = LLM(
        model=str(tiny_folder),
        block_size=4,
        num_kv_blocks=256,
        max_num_batched_tokens=64,
        min_prefill_tokens=1,
        quantization="none",
    )
    assert llm.engine.scheduler.config is llm.engine.config
    uncapped, uncapped_steps = run_staggered(llm, 0.0)
    capped, capped_steps = run_staggered(llm, 0.5)
    assert all(len(t) == 6 for t in uncapped.values())
    assert capped == uncapped
    assert capped_steps > uncapped_steps
