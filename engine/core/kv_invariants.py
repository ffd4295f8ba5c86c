"""An invariant checker for the scheduler and the KV cache, for tests and debugging.

Switched on with `LLMEngine.enable_invariant_checks()`; never on by default (it walks every
block after every step). Besides the pool's bookkeeping it keeps a shadow of what each KV slot
holds: the token prefix whose K/V a *completed* runner call wrote there. That is what makes
prefix-cache poisoning visible: a request about to read a slot that no completed call wrote,
or that holds another sequence's K/V, fails the check at once, instead of quietly producing
different tokens.

Checked after every step:
- each block's ref count equals the number of block tables holding it;
- the free queue holds exactly the blocks nobody holds (free + held = total), once each;
- every block in the prefix-cache index is under its own digest, and its slots hold the K/V of
  exactly the tokens that digest stands for (recomputed from the shadow);
- every running request holds blocks for its computed tokens, and they hold its K/V; waiting
  requests hold nothing; the scheduler's queues agree with its request table.
Checked before every runner call: every slot a request reads was written by a completed call
for the same token prefix (its own step's, a fork parent's, or a verified cache hit), and no
request writes into a block that is shared or registered in the index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from triode.engine.core.kv_cache_manager import cdiv
from triode.engine.core.request import RequestStatus
from triode.engine.core.scheduler import ScheduledRequest, Scheduler, SchedulerOutput


@dataclass(slots=True, frozen=True)
class _Written:
    """What a completed runner call wrote into one slot: the K/V of position `pos` of the
    sequence `tokens` (with `extra_keys`); `key` identifies that whole prefix."""

    pos: int
    key: int
    tokens: tuple[int, ...]
    extra_keys: tuple


def _prefix_keys(tokens: list[int] | tuple[int, ...], extra_keys: tuple) -> list[int]:
    """keys[p] identifies tokens[: p + 1] with the extra keys (a chained 64-bit hash: ample
    for a test oracle)."""
    keys = []
    key = hash(extra_keys)
    for token in tokens:
        key = hash((key, token))
        keys.append(key)
    return keys


class KVInvariantError(AssertionError):
    """The engine broke one of its own invariants (a bug in triode, never a user's fault)."""


class KVInvariantChecker:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.block_size = scheduler.block_size
        num_blocks = scheduler.kv.num_blocks
        self._slots: list[list[_Written | None]] = [
            [None] * self.block_size for _ in range(num_blocks)
        ]
        # Cached blocks whose slots were checked against their digest (block id -> digest).
        self._verified: dict[int, bytes] = {}
        self.num_checks = 0

    # ---- around each runner call -----------------------------------------------------------
    def before_runner_call(self, sched: SchedulerOutput) -> None:
        """The reads of every scheduled request must find K/V that a completed call wrote (the
        runner makes the step's copy-on-write copies first)."""
        pool = self.scheduler.kv.pool
        copied_from = {dst: src for src, dst in sched.blocks_to_copy}
        for item in sched.scheduled:
            # Speculative drafts are written at the positions after the request's tokens.
            tokens = [*item.prompt_token_ids, *item.output_token_ids, *item.spec_token_ids]
            end = item.start_pos + len(item.token_ids)
            _expect(
                tokens[item.start_pos : end] == item.token_ids,
                f"{item.request_id}: scheduled tokens differ from the request's",
            )
            _expect(
                len(item.block_ids) >= cdiv(end, self.block_size),
                f"{item.request_id}: {len(item.block_ids)} blocks for {end} tokens",
            )
            extra_keys = self._extra_keys(item.request_id)
            read_ids = [copied_from.get(b, b) for b in item.block_ids]
            self._expect_written(item.request_id, read_ids, tokens, extra_keys, item.start_pos)
            for block_id in self._written_blocks(item):
                block = pool.blocks[block_id]
                _expect(
                    block.ref_cnt == 1,
                    f"{item.request_id} writes into block {block_id} shared by {block.ref_cnt}",
                )
                _expect(
                    block.block_hash is None,
                    f"{item.request_id} writes into block {block_id} of the prefix cache",
                )

    def after_runner_call(self, sched: SchedulerOutput, completed: bool) -> None:
        """Record what a runner call wrote; a call that raised may have written anything into
        the slots it was given, so those hold nothing usable."""
        for src, dst in sched.blocks_to_copy:
            self._slots[dst] = list(self._slots[src]) if completed else [None] * self.block_size
            self._verified.pop(dst, None)
        bs = self.block_size
        for item in sched.scheduled:
            end = item.start_pos + len(item.token_ids)
            tokens = (*item.prompt_token_ids, *item.output_token_ids, *item.spec_token_ids)[:end]
            extra_keys = self._extra_keys(item.request_id)
            keys = _prefix_keys(tokens, extra_keys)
            for pos in range(item.start_pos, end):
                block_id = item.block_ids[pos // bs]
                written = _Written(pos, keys[pos], tokens, extra_keys) if completed else None
                self._slots[block_id][pos % bs] = written
                self._verified.pop(block_id, None)

    # ---- after each step ---------------------------------------------------------------------
    def check(self) -> None:
        """Every invariant of the module docstring; raises KVInvariantError on the first break."""
        self.num_checks += 1
        self._check_pool()
        self._check_prefix_cache()
        self._check_requests()

    def _check_pool(self) -> None:
        kv = self.scheduler.kv
        pool = kv.pool
        holders: Counter[int] = Counter()
        for request_id in kv.request_ids():
            blocks = kv.blocks_of(request_id)
            holders.update(b.block_id for b in blocks)
            request = self.scheduler.requests.get(request_id)
            _expect(request is not None, f"blocks held by unknown request {request_id}")
            assert request is not None
            _expect(
                request.block_ids == [b.block_id for b in blocks],
                f"{request_id}: block table {request.block_ids} differs from the manager's",
            )
        free_ids = pool.free_queue.block_ids()
        _expect(len(free_ids) == len(set(free_ids)), "a block is twice in the free queue")
        _expect(len(free_ids) == pool.num_free_blocks, "free-queue count is off")
        free = set(free_ids)
        for block in pool.blocks:
            _expect(
                block.ref_cnt == holders[block.block_id],
                f"block {block.block_id}: ref count {block.ref_cnt}, "
                f"held by {holders[block.block_id]}",
            )
            _expect(
                (block.ref_cnt == 0) == (block.block_id in free),
                f"block {block.block_id} (ref count {block.ref_cnt}) free: {block.block_id in free}",
            )
        num_held = sum(1 for b in pool.blocks if b.ref_cnt > 0)
        _expect(num_held + len(free) == pool.num_blocks, "free + held != total")
        _expect(not kv.pending_copies, "copy-on-write copies left behind by schedule()")

    def _check_prefix_cache(self) -> None:
        kv = self.scheduler.kv
        pool = kv.pool
        if not kv.enable_caching:
            _expect(not pool.cached, "blocks registered with prefix caching off")
            return
        bs = self.block_size
        for digest, block in pool.cached.items():
            _expect(block.block_hash == digest, f"block {block.block_id} under a wrong digest")
            if self._verified.get(block.block_id) == digest:
                continue
            last = self._slots[block.block_id][bs - 1]
            _expect(
                last is not None and (last.pos + 1) % bs == 0,
                f"cached block {block.block_id} holds no completed K/V",
            )
            assert last is not None
            first_pos = last.pos + 1 - bs
            keys = _prefix_keys(last.tokens[: last.pos + 1], last.extra_keys)
            for slot, written in enumerate(self._slots[block.block_id]):
                _expect(
                    written is not None
                    and written.pos == first_pos + slot
                    and written.key == keys[first_pos + slot],
                    f"cached block {block.block_id}: slot {slot} holds another sequence's K/V",
                )
            parent = None
            for i in range(last.pos // bs + 1):
                parent = kv.hasher(parent, last.tokens[i * bs : (i + 1) * bs], last.extra_keys)
            _expect(
                parent == digest and block.token_ids == last.tokens[first_pos : last.pos + 1],
                f"cached block {block.block_id} holds K/V of tokens its digest does not name",
            )
            self._verified[block.block_id] = digest

    def _check_requests(self) -> None:
        scheduler = self.scheduler
        kv = scheduler.kv
        running = {r.request_id for r in scheduler.running}
        _expect(len(running) == len(scheduler.running), "a request is twice in running")
        waiting = {r.request_id for r in scheduler.waiting_requests()}
        _expect(len(waiting) == scheduler.num_waiting, "the waiting count is off")
        _expect(not running & waiting, "a request is both running and waiting")
        _expect(running | waiting == set(scheduler.requests), "queues differ from the table")
        for request_id, request in scheduler.requests.items():
            _expect(not request.is_finished, f"finished request {request_id} still tracked")
            _expect(
                0 <= request.num_computed_tokens <= request.num_tokens,
                f"{request_id}: {request.num_computed_tokens} of {request.num_tokens} computed",
            )
            if request_id in waiting:
                _expect(
                    request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
                    and not kv.blocks_of(request_id)
                    and request.num_computed_tokens == 0,
                    f"waiting request {request_id} holds blocks or computed tokens",
                )
                continue
            _expect(
                request.status == RequestStatus.RUNNING, f"{request_id} runs as {request.status}"
            )
            self._expect_written(
                request_id,
                request.block_ids,
                request.all_token_ids,
                request.cache_extra_keys,
                request.num_computed_tokens,
            )

    # ---- helpers -----------------------------------------------------------------------------
    def _expect_written(
        self,
        request_id: str,
        block_ids: list[int],
        tokens: list[int],
        extra_keys: tuple,
        num_tokens: int,
    ) -> None:
        """Slots of positions [0, num_tokens) hold the K/V of exactly `tokens`' prefixes."""
        bs = self.block_size
        _expect(len(block_ids) >= cdiv(num_tokens, bs), f"{request_id}: too few blocks")
        keys = _prefix_keys(tokens[:num_tokens], extra_keys)
        for pos in range(num_tokens):
            held = self._slots[block_ids[pos // bs]][pos % bs]
            _expect(
                held is not None and held.pos == pos and held.key == keys[pos],
                f"{request_id} reads position {pos} from block {block_ids[pos // bs]}, "
                f"which holds {'nothing written' if held is None else 'other K/V'}",
            )

    def _extra_keys(self, request_id: str) -> tuple:
        request = self.scheduler.requests.get(request_id)
        return request.cache_extra_keys if request is not None else ()

    def _written_blocks(self, item: ScheduledRequest) -> set[int]:
        bs = self.block_size
        end = item.start_pos + len(item.token_ids)
        return {item.block_ids[p // bs] for p in range(item.start_pos, end)}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise KVInvariantError(message)
