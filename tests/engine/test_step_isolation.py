"""Isolation inside a step (issue 11): bad values are refused at the engine's boundary, and a
step that still raises fails only the request that makes it raise.

The faulty requests here carry a sampling parameter that skipped validation: set after the
SamplingParams was built, in an EngineInput made by hand rather than by `make_engine_input` (the
one check): what a gap in validation would let through. The step then really raises, in the
real sampler.
"""

from __future__ import annotations

import pytest
import torch
import trio

from triode.engine.async_engine import AsyncEngine, EngineState
from triode.engine.config import EngineConfig
from triode.engine.errors import InvalidRequestError
from triode.engine.inputs import EngineInput
from triode.engine.llm_engine import LLMEngine
from triode.engine.sampling.sampling_params import SamplingParams

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_folder) -> LLMEngine:
    engine = LLMEngine(EngineConfig(model=str(tiny_folder), block_size=4, num_kv_blocks=256))
    engine.enable_invariant_checks()
    return engine


def unchecked_input(prompt: list[int], **poison) -> EngineInput:
    """A request whose sampling parameters skipped every check."""
    params = SamplingParams(max_tokens=4, **GREEDY)
    for name, value in poison.items():
        setattr(params, name, value)
    return EngineInput(list(prompt), params, max_tokens=4)


def add_unchecked(engine: LLMEngine, request_id: str, prompt: list[int], **poison) -> None:
    engine.add_input(request_id, unchecked_input(prompt, **poison))


def run_all(engine: LLMEngine, on_step=None) -> dict[str, list]:
    """Step until idle; the deltas per request id. `on_step(n)` runs before step n."""
    deltas: dict[str, list] = {}
    num_steps = 0
    while engine.has_unfinished_requests():
        if on_step is not None:
            on_step(num_steps)
        for delta in engine.step():
            deltas.setdefault(delta.request_id, []).append(delta)
        num_steps += 1
    return deltas


def tokens(deltas: list) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def alone(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list[int]:
    engine.add_request("alone", prompt, params)
    return tokens(run_all(engine)["alone"])


def test_out_of_range_ids_are_refused_at_the_boundary_naming_the_field(engine):
    vocab = engine.vocab_size
    cases = [
        ([5, vocab], SamplingParams(), "prompt"),
        ([5, -1], SamplingParams(), "prompt"),
        ([5, 6], SamplingParams(min_tokens=2, stop_token_ids=[1_000_000]), "stop_token_ids"),
        ([5, 6], SamplingParams(stop_token_ids=[3, vocab]), "stop_token_ids"),
        ([5, 6.5], SamplingParams(), "prompt"),
    ]
    free_before = engine.scheduler.kv.num_free_blocks
    for prompt, params, field in cases:
        with pytest.raises(InvalidRequestError) as info:
            engine.add_request("bad", prompt, params)
        assert info.value.param == field
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv.num_free_blocks == free_before
    engine.add_request("ok", [5, vocab - 1], SamplingParams(stop_token_ids=[vocab - 1]))
    assert run_all(engine)["ok"][-1].finish_reason in ("length", "stop")


def test_a_step_that_raises_for_one_request_fails_only_that_request(engine):
    params = SamplingParams(max_tokens=12, **GREEDY)
    prompts = {"a": list(range(100, 113)), "b": list(range(200, 207))}
    want = {rid: alone(engine, p, params) for rid, p in prompts.items()}
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, params)
    # min_tokens masks the stop tokens' logits: index 1,000,000 raises inside the step.
    poison = dict(min_tokens=2, stop_token_ids=[1_000_000])
    deltas = run_all(
        engine, lambda n: n == 2 and add_unchecked(engine, "poisoned", [7, 8, 9], **poison)
    )
    (failed,) = deltas["poisoned"]
    assert failed.finish_reason == "error" and "IndexError" in failed.error
    for rid in prompts:
        assert tokens(deltas[rid]) == want[rid] and deltas[rid][-1].finish_reason == "length"
    assert engine.num_failed_steps == 0
    assert engine.scheduler.kv.num_free_blocks == engine.scheduler.kv.num_blocks


def test_three_faulty_requests_in_a_row_leave_the_engine_working(engine):
    params = SamplingParams(max_tokens=10, **GREEDY)
    want = alone(engine, [11, 12, 13], params)
    engine.add_request("innocent", [11, 12, 13], params)

    def poison(step: int) -> None:
        if step in (1, 2, 3):
            add_unchecked(engine, f"bad{step}", [7, 8], min_tokens=2, stop_token_ids=[10**6])

    deltas = run_all(engine, poison)
    assert all(deltas[f"bad{i}"][-1].finish_reason == "error" for i in (1, 2, 3))
    assert tokens(deltas["innocent"]) == want
    assert engine.num_failed_steps == 0
    # Alone in their steps (nobody else to compare with), a probe through the model clears
    # the engine each time.
    for i in range(3):
        add_unchecked(engine, f"alone{i}", [7, 8], min_tokens=2, stop_token_ids=[10**6])
        (delta,) = engine.step()
        assert delta.finish_reason == "error" and engine.num_failed_steps == 0
    assert alone(engine, [11, 12, 13], params) == want


def test_seeded_samples_draw_the_same_after_a_failed_step(engine):
    """The poisoned row raises after every row drew its random number (top-k logprobs over
    more than the vocabulary): the innocent seeded row's generator is rolled back, so its
    tokens are what it draws alone."""
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)
    want = alone(engine, [21, 22, 23], params)
    engine.add_request("seeded", [21, 22, 23], params)
    deltas = run_all(
        engine,
        lambda n: (
            n == 3
            and add_unchecked(engine, "poisoned", [7, 8], temperature=1.0, seed=1, logprobs=10**6)
        ),
    )
    assert deltas["poisoned"][-1].finish_reason == "error"
    assert tokens(deltas["seeded"]) == want


def test_a_fault_of_the_engine_itself_counts_toward_its_death(tiny_folder):
    engine = LLMEngine(EngineConfig(model=str(tiny_folder), block_size=4, num_kv_blocks=32))
    # A broken model (here: a norm weight of the wrong size) fails every step, whatever the
    # request: the probe fails too.
    norm = engine.runner.model.norm
    norm.weight = torch.nn.Parameter(norm.weight[:-1], requires_grad=False)
    for i in range(3):
        engine.add_request(f"r{i}", [5, 6, 7], SamplingParams(max_tokens=2))
        (delta,) = engine.step()
        assert delta.finish_reason == "error"
        assert engine.num_failed_steps == i + 1
    assert engine.scheduler.kv.num_free_blocks == 32


async def test_the_actor_stays_alive_through_three_faulty_requests(tiny_folder):
    engine = AsyncEngine(EngineConfig(model=str(tiny_folder), num_kv_blocks=64))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        innocent_params = SamplingParams(max_tokens=200, **GREEDY)
        innocent = await engine.submit(EngineInput([11, 12, 13], innocent_params, 200))
        for _ in range(3):
            bad = unchecked_input([7, 8], min_tokens=2, stop_token_ids=[10**6])
            stream = await engine.submit(bad)
            with trio.fail_after(30):
                (delta,) = [d async for d in stream]
            assert delta.finish_reason == "error"
        with trio.fail_after(30):
            got = [d async for d in innocent]
        assert sum(len(d.token_ids) for d in got) == 200 and got[-1].finish_reason == "length"
        assert engine.state is EngineState.READY
        nursery.cancel_scope.cancel()
