"""Prefix-cache poisoning (issue 10): a block may enter the prefix-cache index only after the
step that wrote its K/V has completed."""

from __future__ import annotations

from tests.engine.helpers import make_request, make_scheduler
from triode.engine.config import EngineConfig
from triode.engine.llm_engine import LLMEngine
from triode.engine.sampling.sampling_params import SamplingParams

GREEDY = dict(temperature=0, ignore_eos=True)


def _run(folder, requests, *, add_second_after_steps: int, **config) -> tuple[dict, int]:
    """Token ids per request id, and the number of preemptions."""
    engine = LLMEngine(EngineConfig(model=str(folder), attention_backend="torch", **config))
    tokens: dict[str, list[int]] = {}
    pending = list(requests)

    def add_next() -> None:
        request_id, prompt, priority, max_tokens = pending.pop(0)
        params = SamplingParams(max_tokens=max_tokens, **GREEDY)
        engine.add_request(request_id, prompt, params, priority=priority)

    add_next()
    num_steps = 0
    while engine.has_unfinished_requests() or pending:
        if pending and num_steps == add_second_after_steps:
            add_next()
        for delta in engine.step():
            tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        num_steps += 1
    return tokens, engine.scheduler.num_preemptions


def test_issue10_preempted_request_never_reads_blocks_registered_before_their_kv(tiny_folder):
    """The issue's reproduction. The priority-5 request's second step schedules its last 8
    prompt tokens (two more full blocks), then the priority-0 arrival preempts it in the same
    `schedule()`. The old code had registered those two blocks already; on resuming, the
    request "hit" them and read K/V that was never written, so its tokens changed from the
    third or fourth on."""
    low = ("low", list(range(100, 128)), 5, 6)  # 28 tokens: 7 blocks of 4
    high = ("high", list(range(300, 312)), 0, 1)
    alone, _ = _run(tiny_folder, [low], add_second_after_steps=0, block_size=4, num_kv_blocks=256)
    tight = dict(block_size=4, num_kv_blocks=9, max_num_batched_tokens=20)
    for caching in (True, False):
        crowded, num_preemptions = _run(
            tiny_folder,
            [low, high],
            add_second_after_steps=1,
            enable_prefix_caching=caching,
            **tight,
        )
        assert num_preemptions == 1  # the scenario really happened
        assert crowded["low"] == alone["low"], f"prefix caching {caching}"


def test_blocks_enter_the_index_only_when_their_step_completes():
    scheduler = make_scheduler(num_blocks=16, block_size=4, max_num_batched_tokens=8)
    kv = scheduler.kv
    request = make_request("a", 12, max_tokens=4)
    scheduler.add_request(request)
    out = scheduler.schedule()  # the first 8 prompt tokens: blocks 0 and 1 will be full
    assert request.block_ids == [0, 1] and not kv.pool.cached
    scheduler.update_from_output(out, {})
    assert sorted(b.block_id for b in kv.pool.cached.values()) == [0, 1]
    out = scheduler.schedule()  # the last 4 prompt tokens fill block 2
    assert len(kv.pool.cached) == 2
    scheduler.update_from_output(out, {"a": 7})
    assert sorted(b.block_id for b in kv.pool.cached.values()) == [0, 1, 2]


def test_work_unscheduled_by_a_preemption_leaves_nothing_in_the_index():
    """A request scheduled and then preempted in the same `schedule()` gives its blocks back
    with no hash: a later request with the same prompt finds only what really ran."""
    scheduler = make_scheduler(num_blocks=7, block_size=4, max_num_batched_tokens=16)
    kv = scheduler.kv
    prompt = list(range(40, 64))  # 24 tokens: 6 blocks
    low = make_request("low", prompt, priority=5)
    scheduler.add_request(low)
    out = scheduler.schedule()  # 16 tokens: blocks 0-3
    scheduler.update_from_output(out, {})
    assert sorted(b.block_id for b in kv.pool.cached.values()) == [0, 1, 2, 3]
    scheduler.add_request(make_request("high", list(range(80, 88)), priority=0))
    out = scheduler.schedule()  # low's last 8 (blocks 4, 5), then high preempts low
    assert [item.request_id for item in out.scheduled] == ["high"]
    assert out.preempted_request_ids == ["low"]
    assert high_blocks(out) == [6, 5]  # block 4, allocated to low but never written, is free
    again = make_request("again", [*prompt, 1])
    hits, num_tokens = kv.get_computed_blocks(again)
    assert [b.block_id for b in hits] == [0, 1, 2, 3] and num_tokens == 16


def high_blocks(out) -> list[int]:
    (item,) = out.scheduled
    return item.block_ids
