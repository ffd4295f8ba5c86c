"""The trio actor: one lifecycle state, an immutable model description, typed refusals, all-or-
nothing batches, and plain picklable data across its door."""

from __future__ import annotations

import dataclasses
import logging
import pickle

import pytest
import trio

from triode.engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    EngineInput,
    EngineNotReadyError,
    EngineState,
    EngineStoppedError,
    InvalidRequestError,
    LLMEngine,
    QueueFullError,
    SamplingParams,
    make_engine_input,
)

pytestmark = pytest.mark.timeout(120)

GREEDY = SamplingParams(temperature=0, max_tokens=4)


@pytest.fixture(scope="module")
def core(tiny_folder) -> LLMEngine:
    """One loaded engine core, lent to a fresh actor per test (loading it once saves time)."""
    config = EngineConfig(
        model=str(tiny_folder), served_model_name="tiny", num_kv_blocks=64, max_num_seqs=1
    )
    return LLMEngine(config)


@pytest.fixture
async def engine(core, nursery):
    """A running actor over `core`; every request is released when the test ends."""
    actor = AsyncEngine(dataclasses.replace(core.config, max_num_waiting=4), engine=core)
    await nursery.start(actor.run)
    yield actor
    await actor.shutdown()
    with trio.fail_after(10):
        while actor.state is not EngineState.STOPPED:
            await trio.sleep(0.01)
    assert not core.has_unfinished_requests()


async def test_lifecycle_loading_ready_draining_stopped(core, nursery):
    actor = AsyncEngine(core.config, engine=core)
    assert actor.state is EngineState.LOADING
    with pytest.raises(EngineNotReadyError) as refused:
        actor.model_info  # noqa: B018
    assert type(refused.value) is EngineNotReadyError  # loading, not stopped or dead
    with pytest.raises(EngineNotReadyError):
        await actor.submit(make_engine_input(core.model_info, [1, 2, 3], GREEDY))

    await nursery.start(actor.run)
    assert actor.state is EngineState.READY and not actor.draining.is_set()
    running = await actor.generate("Once upon a time", SamplingParams(max_tokens=8))

    actor.begin_draining()
    assert actor.state is EngineState.DRAINING and actor.draining.is_set()
    with pytest.raises(EngineStoppedError):
        await actor.generate("Hi", GREEDY)
    deltas = [d async for d in running]  # what was running still finishes
    assert deltas[-1].finish_reason == "length" and deltas[-1].num_output_tokens == 8

    await actor.shutdown()
    with trio.fail_after(10):
        while actor.state is not EngineState.STOPPED:
            await trio.sleep(0.01)
    with pytest.raises(EngineStoppedError):
        actor.check_serving()


async def test_a_model_that_fails_to_load_leaves_the_engine_dead(tmp_path):
    actor = AsyncEngine(EngineConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="not found"):
        await actor.run()
    assert actor.state is EngineState.DEAD and "not found" in (actor.dead_reason or "")
    assert actor.draining.is_set()
    with pytest.raises(EngineDeadError, match="not found"):
        actor.check_serving()


async def test_model_info_is_immutable_plain_data(engine, core):
    info = engine.model_info
    assert (info.name, info.max_model_len, info.vocab_size) == ("tiny", 1024, 49152)
    assert 2 in info.eos_token_ids  # the tiny model's eos
    assert info.folder == str(core.model_folder)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.max_model_len = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(info)) == info


async def test_what_crosses_the_door_is_picklable(engine):
    engine_input = await engine.input_processor.process("Hello there", GREEDY)
    copy = pickle.loads(pickle.dumps(engine_input))
    assert copy.prompt_token_ids == engine_input.prompt_token_ids and copy.max_tokens == 4
    stream = await engine.submit(copy)
    deltas = [d async for d in stream]
    assert pickle.loads(pickle.dumps(deltas[-1])).finish_reason == "length"


async def test_a_batch_larger_than_the_queue_is_invalid_not_busy(engine):
    one = make_engine_input(engine.model_info, [5, 6, 7], GREEDY)
    with pytest.raises(InvalidRequestError) as refused:
        await engine.submit_all([one] * 5)  # max_num_waiting=4: it could never fit
    assert refused.value.param == "prompt" and "max_num_waiting" in str(refused.value)

    held = await engine.submit_all([one] * 4)  # max_num_seqs=1: these wait
    with pytest.raises(QueueFullError) as busy:
        await engine.submit(one)
    assert busy.value.retry_after_s >= 1
    for stream in held:
        engine.abort_nowait(stream.request_id)
    reasons = [[d async for d in stream][-1].finish_reason for stream in held]
    assert reasons[1:] == ["abort"] * 3  # the first may have finished already


async def test_a_batch_is_all_or_nothing(engine):
    one = make_engine_input(engine.model_info, [5, 6, 7], GREEDY)
    streams = await engine.submit_all([one, one], ["a", "b"])
    with pytest.raises(InvalidRequestError, match="already in use"):
        await engine.submit_all([one, one], ["c", "a"])  # "a" runs: "c" is not queued either
    assert engine.num_unfinished == 2
    for stream in streams:
        assert [d async for d in stream][-1].finish_reason == "length"
    streams = await engine.submit_all([one], ["c"])  # "c" is free: it was never queued
    assert [d async for d in streams[0]][-1].finish_reason == "length"


async def test_stats_count_what_the_engine_did(engine):
    before = engine.stats()
    stream = await engine.generate([5, 6, 7, 8], SamplingParams(max_tokens=6, ignore_eos=True))
    assert [d async for d in stream][-1].num_output_tokens == 6
    after = engine.stats()
    assert after.num_generation_tokens - before.num_generation_tokens == 6
    assert after.num_prompt_tokens - before.num_prompt_tokens == 4
    assert after.num_running == 0 and after.num_waiting == 0


async def test_the_stats_log_reports_throughput_while_busy(engine, nursery, caplog):
    from triode.web.stats_log import log_stats_periodically

    caplog.set_level(logging.INFO, logger="triode.stats")
    nursery.start_soon(log_stats_periodically, engine, 0.05)
    await trio.sleep(0.2)  # idle: nothing to say
    assert not caplog.records
    params = SamplingParams(max_tokens=200, ignore_eos=True)
    assert [d async for d in await engine.generate([5] * 40, params)][-1].num_output_tokens == 200
    await trio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("engine: prompt ") for line in lines)
    assert any("generation 0.0 tok/s" not in line for line in lines)
    assert "KV cache" in lines[0] and "prefix-cache hit rate" in lines[0]
    assert lines[-1].startswith("engine: prompt 0.0 tok/s, generation 0.0 tok/s, running 0")
    num_lines = len(caplog.records)
    await trio.sleep(0.2)  # idle again: quiet after one closing line
    assert len(caplog.records) == num_lines


def test_engine_input_is_the_one_check_against_the_model(core):
    info = core.model_info
    with pytest.raises(InvalidRequestError) as bad:
        make_engine_input(info, [1, info.vocab_size], GREEDY)
    assert bad.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as bad:
        make_engine_input(info, [1], SamplingParams(stop_token_ids=[info.vocab_size]))
    assert bad.value.param == "stop_token_ids"
    with pytest.raises(InvalidRequestError) as bad:
        make_engine_input(info, [], GREEDY)
    assert bad.value.param == "prompt"
    resolved = make_engine_input(info, [1, 2], SamplingParams(max_tokens=None))
    assert isinstance(resolved, EngineInput) and resolved.max_tokens == info.max_model_len - 2
