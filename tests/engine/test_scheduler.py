"""The counter-based scheduler: token budget, chunked prefill, preemption, priorities, n>1."""

from __future__ import annotations

from tests.engine.helpers import make_request, make_scheduler, run_step
from triode.engine.core.request import RequestStatus


def scheduled(out) -> dict[str, int]:
    return {item.request_id: len(item.token_ids) for item in out.scheduled}


def test_long_prompt_is_chunked_under_the_token_budget():
    s = make_scheduler(max_num_batched_tokens=16, block_size=4)
    s.add_request(make_request("a", 40, max_tokens=2))
    out, updated, _ = run_step(s)
    assert scheduled(out) == {"a": 16} and out.scheduled[0].sample_ids == [] and not updated
    out, updated, _ = run_step(s)
    assert scheduled(out) == {"a": 16} and out.scheduled[0].start_pos == 16
    out, updated, _ = run_step(s)
    assert scheduled(out) == {"a": 8}
    assert out.scheduled[0].sample_ids == ["a"] and [r.request_id for r in updated] == ["a"]
    out, _, finished = run_step(s)
    assert scheduled(out) == {"a": 1}
    assert [r.request_id for r in finished] == ["a"]
    assert finished[0].status == RequestStatus.FINISHED_LENGTH
    assert s.kv.num_free_blocks == s.kv.num_blocks


def test_decode_goes_first_and_prefill_fills_the_rest_of_the_budget():
    s = make_scheduler(max_num_batched_tokens=10, block_size=4)
    s.add_request(make_request("a", 4, max_tokens=5))
    run_step(s)  # a's prompt
    s.add_request(make_request("b", 30, max_tokens=5))
    s.add_request(make_request("c", 3, max_tokens=5))
    out, _, _ = run_step(s)
    # a decodes one token, b's first chunk takes the other 9, c must wait.
    assert scheduled(out) == {"a": 1, "b": 9}
    assert [item.request_id for item in out.scheduled] == ["a", "b"]
    out, _, _ = run_step(s)
    assert scheduled(out) == {"a": 1, "b": 9}
    out, _, _ = run_step(s)
    assert scheduled(out) == {"a": 1, "b": 9}
    out, _, _ = run_step(s)
    assert scheduled(out) == {"a": 1, "b": 3, "c": 3}


def test_max_num_seqs_limits_the_batch():
    s = make_scheduler(max_num_seqs=2)
    for rid in "abc":
        s.add_request(make_request(rid, 2))
    out, _, _ = run_step(s)
    assert set(scheduled(out)) == {"a", "b"}
    assert s.num_waiting == 1


def test_preemption_returns_every_block_and_resumes_through_the_prefix_cache():
    s = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    s.add_request(make_request("a", 8, max_tokens=12))  # 2 blocks, grows to 5
    s.add_request(make_request("b", 8, max_tokens=12))
    out, _, _ = run_step(s)
    assert scheduled(out) == {"a": 8, "b": 8}
    assert s.kv.num_free_blocks == 2
    preempted = []
    for _ in range(6):
        out, _, _ = run_step(s)
        preempted += out.preempted_request_ids
    assert preempted == ["b"]  # the later request goes
    b = s.requests["b"]
    assert b.status == RequestStatus.PREEMPTED and b.block_ids == [] and b.num_computed_tokens == 0
    assert s.kv.num_held_blocks("b") == 0
    # a holds only its own blocks; every other block is back in the pool.
    assert s.kv.num_free_blocks == s.kv.num_blocks - len(s.requests["a"].block_ids)
    while s.has_unfinished_requests():
        run_step(s)
    assert s.kv.num_free_blocks == s.kv.num_blocks
    assert b.num_preemptions == 1 and b.num_output_tokens == 12
    # a grew into b's freed blocks, tail first; b's first block survived and b resumed from it.
    assert s.kv.stats.num_hit_tokens == 4


def test_preemption_picks_the_lowest_priority_request():
    s = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    s.add_request(make_request("low", 8, max_tokens=12, priority=5))
    s.add_request(make_request("high", 8, max_tokens=12, priority=0))
    preempted = []
    for _ in range(7):
        out, _, _ = run_step(s)
        preempted += out.preempted_request_ids
    assert preempted == ["low"]


def test_waiting_requests_are_admitted_in_priority_order():
    s = make_scheduler(max_num_seqs=1)
    s.add_request(make_request("late", 2, priority=1))
    s.add_request(make_request("urgent", 2, priority=-1))
    out, _, _ = run_step(s)
    assert scheduled(out) == {"urgent": 2}


def test_abort_frees_blocks_of_running_and_waiting_requests():
    s = make_scheduler(max_num_seqs=1)
    s.add_request(make_request("a", 10))
    s.add_request(make_request("b", 10))
    run_step(s)
    finished = s.finish_requests(["a", "b", "nope"], RequestStatus.FINISHED_ABORTED)
    assert {r.request_id for r in finished} == {"a", "b"}
    assert s.kv.num_free_blocks == s.kv.num_blocks
    assert not s.has_unfinished_requests() and s.num_waiting == 0 and s.num_running == 0
    out = s.schedule()
    assert out.is_empty and sorted(out.finished_request_ids) == ["a", "b"]


def test_eos_and_stop_token_ids_finish_requests():
    s = make_scheduler()
    s.add_request(make_request("a", 3, max_tokens=10))
    _, _, finished = run_step(s, token=2)  # eos
    assert finished[0].status == RequestStatus.FINISHED_STOPPED


def test_n_samples_fork_after_the_prompt_and_share_its_blocks():
    s = make_scheduler(block_size=4, num_blocks=32)
    s.add_request(make_request("x", 8, n=4, max_tokens=3))
    out, updated, _ = run_step(s)
    assert out.scheduled[0].sample_ids == ["x", "x#1", "x#2", "x#3"]
    assert sorted(r.request_id for r in updated) == ["x", "x#1", "x#2", "x#3"]
    # The 8-token prompt fills two blocks, shared by all four samples.
    assert all(r.block_ids == [0, 1] for r in updated)
    assert s.kv.pool.blocks[0].ref_cnt == 4 and s.kv.num_free_blocks == 30
    out, _, _ = run_step(s)
    assert sorted(scheduled(out)) == ["x", "x#1", "x#2", "x#3"]
    assert len({r.block_ids[2] for r in updated}) == 4  # each writes its own third block
    while s.has_unfinished_requests():
        run_step(s)
    assert s.kv.num_free_blocks == s.kv.num_blocks


def test_a_higher_priority_arrival_preempts_a_lower_priority_runner():
    s = make_scheduler(max_num_seqs=1, max_num_batched_tokens=64)
    s.add_request(make_request("low", 4, max_tokens=20, priority=5))
    run_step(s)
    run_step(s)
    s.add_request(make_request("high", 4, max_tokens=2, priority=0))
    out, _, _ = run_step(s)
    # "low" decoded in the running pass, then gave way (and its budget) to "high".
    assert scheduled(out) == {"high": 4}
    assert out.preempted_request_ids == ["low"]
    assert s.requests["low"].status == RequestStatus.PREEMPTED
    while s.has_unfinished_requests():
        run_step(s)
    assert s.kv.num_free_blocks == s.kv.num_blocks


def test_equal_priority_arrivals_wait_their_turn():
    s = make_scheduler(max_num_seqs=1)
    s.add_request(make_request("first", 4, max_tokens=5))
    run_step(s)
    s.add_request(make_request("second", 4, max_tokens=5))
    out, _, _ = run_step(s)
    assert scheduled(out) == {"first": 1} and not out.preempted_request_ids


def test_a_higher_priority_arrival_takes_kv_blocks_from_a_lower_one():
    s = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    s.add_request(make_request("low", 12, max_tokens=4, priority=1))
    run_step(s)  # 3 of 4 blocks
    s.add_request(make_request("high", 8, max_tokens=2, priority=0))
    out, _, _ = run_step(s)
    assert "high" in scheduled(out) and out.preempted_request_ids == ["low"]
