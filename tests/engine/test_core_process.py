"""The engine core in a child process behind the actor: the same tokens as in-process, aborts
that free the child's blocks, and a child that dies or cannot load turns the engine DEAD with
the reason instead of hanging its callers."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import trio

from triode.engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    EngineState,
    LLMEngine,
    SamplingParams,
)

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["Once upon a time", "The capital of France is", "1, 2, 3,"]


@pytest.fixture(scope="module")
def config(tiny_folder) -> EngineConfig:
    return EngineConfig(
        model=str(tiny_folder), num_kv_blocks=64, max_num_seqs=4, num_threads=1, seed=3
    )


async def _collect(actor: AsyncEngine, prompt: str, params: SamplingParams) -> list[int]:
    stream = await actor.generate(prompt, params)
    ids: list[int] = []
    async for delta in stream:
        assert delta.error is None
        ids.extend(delta.token_ids)
    return ids


async def _wait_state(actor: AsyncEngine, state: EngineState) -> None:
    with trio.fail_after(30):
        while actor.state is not state:
            await trio.sleep(0.01)


async def test_child_process_gives_the_in_process_tokens_and_frees_aborted_blocks(config, nursery):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    core = LLMEngine(dataclasses.replace(config, engine_process=False))
    local = AsyncEngine(core.config, engine=core)
    await nursery.start(local.run)
    expected = [await _collect(local, p, s) for p in PROMPTS for s in (greedy, seeded)]
    await local.shutdown()

    actor = AsyncEngine(dataclasses.replace(config, engine_process=True))
    await nursery.start(actor.run)
    assert actor.model_info == core.model_info
    results: dict[int, list[int]] = {}

    async def one(i: int, prompt: str, params: SamplingParams) -> None:
        results[i] = await _collect(actor, prompt, params)

    async with trio.open_nursery() as inner:  # concurrently: batched in the child
        for i, (p, s) in enumerate((p, s) for p in PROMPTS for s in (greedy, seeded)):
            inner.start_soon(one, i, p, s)
    assert [results[i] for i in range(len(expected))] == expected

    # An abort while the child is generating: the stream ends "abort", the child's blocks
    # are free again (its stats reach the actor), nothing keeps running.
    stream = await actor.generate("Hello", SamplingParams(max_tokens=400, ignore_eos=True))
    async for delta in stream:
        if delta.num_output_tokens >= 2 and not delta.is_finished:
            actor.abort_nowait(stream.request_id)
        last = delta
    assert last.finish_reason == "abort"
    with trio.fail_after(10):
        while actor.stats().num_running or actor.stats().kv_cache_usage:
            await _collect(actor, "x", SamplingParams(max_tokens=1))  # a step refreshes stats
    assert actor.num_unfinished == 0
    await actor.shutdown()
    await _wait_state(actor, EngineState.STOPPED)
    assert actor.profile.num_steps > 0


async def test_a_killed_child_makes_the_engine_dead_and_ends_its_streams(config, nursery):
    actor = AsyncEngine(dataclasses.replace(config, engine_process=True))
    await nursery.start(actor.run)
    stream = await actor.generate("Hello", SamplingParams(max_tokens=900, ignore_eos=True))
    first = await stream.__anext__()
    assert first.error is None
    process = actor._process  # the test needs the child's pid
    assert process is not None
    os.kill(process.process.pid, signal.SIGKILL)
    deltas = [d async for d in stream]
    assert deltas[-1].finish_reason == "error" and "signal 9" in (deltas[-1].error or "")
    await _wait_state(actor, EngineState.DEAD)
    assert "signal 9" in (actor.dead_reason or "")
    with pytest.raises(EngineDeadError):
        await actor.generate("Hi", SamplingParams(max_tokens=1))


async def test_a_child_that_cannot_load_reports_why(tmp_path):
    actor = AsyncEngine(EngineConfig(model=str(tmp_path / "missing"), engine_process=True))
    with pytest.raises(Exception, match="missing"):
        await actor.run()
    assert actor.state is EngineState.DEAD
    assert "missing" in (actor.dead_reason or "")
