"""The KV-cache manager and block pool against a simple reference model (hypothesis stateful).

A random sequence of what the scheduler does to the cache (admit a waiting request with its
prefix-cache hits, schedule a chunk or a decode token, complete the step, fail it, preempt,
fork n>1 samples, finish, reset the cache) runs on the real `KVCacheManager` and on
`RefKVCache`, a model of the same contract written as plainly as possible: lists for the free
queue, a dict keyed by the token prefix itself (no digests) for the prefix cache. After every
operation they must agree block for block: each request's table, every ref count, the free
queue in eviction order, the cached blocks and their tokens.

Independently of the model, a shadow of what each KV slot holds (written only when a step
completes, unknown after a failed one) checks that the cache is correct by construction: every
block in the prefix-cache index holds the K/V of exactly the tokens it is registered for, and
every request's computed positions hold its own K/V (a cache hit included).
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from triode.engine.core.kv_cache_manager import KVCacheManager, cdiv
from triode.engine.core.request import Request
from triode.engine.sampling.sampling_params import SamplingParams

BS = 4
TOKENS = st.integers(0, 2)
# Prompts start with part of one of two fixed prefixes, so they share whole blocks often.
BASES = ((0, 1, 2, 0, 1, 1, 2, 2, 0, 0, 1, 2), (2, 2, 2, 2, 1, 0, 1, 0))
PROMPTS = st.builds(
    lambda base, cut, tail: [*base[:cut], *tail] or [0],
    st.sampled_from(BASES),
    st.integers(0, 12),
    st.lists(TOKENS, max_size=5),
)
EXTRA_KEYS = st.sampled_from([(), ("adapter-a",)])
MAX_LIVE = 6

Key = tuple  # (extra keys, token prefix through the end of one full block)


class RefKVCache:
    """The contract of KVCacheManager + BlockPool, naively: what the real one must equal."""

    def __init__(self, num_blocks: int, caching: bool) -> None:
        self.caching = caching
        self.refs = [0] * num_blocks
        self.free = list(range(num_blocks))  # head (index 0) is evicted/reused first
        self.key: list[Key | None] = [None] * num_blocks
        self.index: dict[Key, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.num_registered: dict[str, int] = {}
        self.copies: list[tuple[int, int]] = []

    def _take_free(self) -> int:
        block = self.free.pop(0)
        if self.key[block] is not None:
            del self.index[self.key[block]]
            self.key[block] = None
        self.refs[block] = 1
        return block

    def _drop(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free.append(block)

    def lookup(self, tokens: list[int], extra: tuple) -> list[int]:
        """The longest run of cached leading full blocks, leaving the last token to compute."""
        if not self.caching:
            return []
        hits = []
        for i in range((len(tokens) - 1) // BS):
            block = self.index.get((extra, tuple(tokens[: (i + 1) * BS])))
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate(self, rid: str, computed: int, num_new: int, hits: list[int]) -> bool:
        table = self.tables.get(rid, [])
        cow = bool(table) and computed % BS != 0 and self.refs[table[-1]] > 1
        need = max(0, cdiv(computed + len(hits) * BS + num_new, BS) - len(table) - len(hits))
        revived = sum(1 for b in hits if self.refs[b] == 0)
        if need + cow + revived > len(self.free):
            return False
        table = self.tables.setdefault(rid, [])
        for block in hits:
            if self.refs[block] == 0:
                self.free.remove(block)
            self.refs[block] += 1
            table.append(block)
        if cow:
            copy = self._take_free()
            self.copies.append((table[-1], copy))
            self._drop(table[-1])
            table[-1] = copy
        computed += len(hits) * BS
        while len(table) < cdiv(computed + num_new, BS):
            table.append(self._take_free())
        return True

    def register(self, rid: str, tokens: list[int], computed: int, extra: tuple) -> None:
        """After a completed step: full computed blocks enter the index (first one wins)."""
        if not self.caching:
            return
        table = self.tables.get(rid, [])
        num_full = min(computed // BS, len(table))
        for i in range(self.num_registered.get(rid, 0), num_full):
            key = (extra, tuple(tokens[: (i + 1) * BS]))
            block = table[i]
            if self.key[block] is None and key not in self.index:
                self.index[key] = block
                self.key[block] = key
        self.num_registered[rid] = max(num_full, self.num_registered.get(rid, 0))

    def fork(self, parent: str, child: str) -> None:
        self.tables[child] = list(self.tables.get(parent, []))
        for block in self.tables[child]:
            self.refs[block] += 1
        self.num_registered[child] = self.num_registered.get(parent, 0)

    def release(self, rid: str) -> None:
        """Free a request's blocks, its tail first (evicted before its more shareable head)."""
        for block in reversed(self.tables.pop(rid, [])):
            self._drop(block)
        self.num_registered.pop(rid, None)

    def reset(self) -> bool:
        if len(self.free) != len(self.refs):
            return False
        self.index.clear()
        self.key = [None] * len(self.refs)
        return True


class KVCacheMachine(RuleBasedStateMachine):
    """Drives the real manager and the reference side by side, as a scheduler would."""

    @initialize(
        num_blocks=st.integers(3, 14),
        caching=st.sampled_from([True, True, False]),
        prompts=st.lists(st.tuples(PROMPTS, EXTRA_KEYS), min_size=1, max_size=4),
    )
    def setup(self, num_blocks: int, caching: bool, prompts: list) -> None:
        self.kv = KVCacheManager(num_blocks, BS, enable_caching=caching, hash_salt=b"test")
        self.ref = RefKVCache(num_blocks, caching)
        self.requests: dict[str, Request] = {}
        self.waiting: list[str] = []
        self.running: list[str] = []
        self.pending: dict[str, int] = {}  # scheduled this step, not yet run: tokens
        # What each slot holds: (extra keys, the token prefix through that position), written
        # only by a completed step; None when nothing usable is there.
        self.slots: list[list[tuple | None]] = [[None] * BS for _ in range(num_blocks)]
        self.ids = itertools.count()
        for prompt, extra in prompts:
            self.arrive(prompt, extra)

    # ---- helpers ----------------------------------------------------------------------------
    def _pick(self, ids: list[str], pick: int) -> Request:
        return self.requests[ids[pick % len(ids)]]

    def _idle_running(self) -> list[str]:
        return [rid for rid in self.running if rid not in self.pending]

    def _take_copies(self) -> None:
        """The runner makes the step's copy-on-write copies before anything writes."""
        copies = self.kv.take_pending_copies()
        assert copies == self.ref.copies
        self.ref.copies = []
        for src, dst in copies:
            self.slots[dst] = list(self.slots[src])

    def _schedule(self, request: Request, num_new: int, hits: list | None = None) -> bool:
        rid = request.request_id
        ref_hits = []
        if hits is not None:
            ref_hits = self.ref.lookup(request.all_token_ids, request.cache_extra_keys)
            assert [b.block_id for b in hits] == ref_hits
        computed = request.num_computed_tokens
        ok = self.kv.allocate_slots(request, num_new, hits or [])
        assert ok == self.ref.allocate(rid, computed, num_new, ref_hits)
        if ok:
            self.pending[rid] = num_new
            self._take_copies()
        return ok

    def _drop(self, request: Request) -> None:
        rid = request.request_id
        self.kv.free(request)
        self.ref.release(rid)
        self.pending.pop(rid, None)

    # ---- what the scheduler does ----------------------------------------------------------
    @rule(prompt=PROMPTS, extra=EXTRA_KEYS)
    def arrive(self, prompt: list[int], extra: tuple) -> None:
        if len(self.requests) >= MAX_LIVE:
            return
        rid = f"r{next(self.ids)}"
        request = Request(rid, prompt, SamplingParams(max_tokens=64), max_tokens=64)
        request.cache_extra_keys = extra
        self.requests[rid] = request
        self.waiting.append(rid)

    @rule(pick=st.integers(0, 99), chunk=st.integers(1, 12))
    def admit(self, pick: int, chunk: int) -> None:
        """A waiting request takes its prefix-cache hits and the slots of its first chunk."""
        if not self.waiting:
            return
        request = self._pick(self.waiting, pick)
        hits, num_cached = self.kv.get_computed_blocks(request)
        num_new = min(request.num_tokens - num_cached, chunk)
        if self._schedule(request, num_new, hits):
            self.waiting.remove(request.request_id)
            self.running.append(request.request_id)

    @rule(pick=st.integers(0, 99), chunk=st.integers(1, 12))
    def schedule(self, pick: int, chunk: int) -> None:
        """A running request's next chunk of prompt, or its next decode token."""
        if not self._idle_running():
            return
        request = self._pick(self._idle_running(), pick)
        self._schedule(request, min(request.num_tokens - request.num_computed_tokens, chunk))

    @rule(pick=st.integers(0, 99), tokens=st.lists(TOKENS, min_size=1, max_size=3))
    def complete(self, pick: int, tokens: list[int]) -> None:
        """The step ran: its K/V is written, full blocks are registered, and a request whose
        tokens are all computed samples one (forking a sample per extra drawn token)."""
        if not self.pending:
            return
        request = self._pick(list(self.pending), pick)
        rid = request.request_id
        start = request.num_computed_tokens
        num_new = self.pending.pop(rid)
        all_tokens = request.all_token_ids
        for pos in range(start, start + num_new):
            block = request.block_ids[pos // BS]
            self.slots[block][pos % BS] = (request.cache_extra_keys, tuple(all_tokens[: pos + 1]))
        request.num_computed_tokens += num_new
        self.kv.cache_computed_blocks(request)
        self.ref.register(rid, all_tokens, request.num_computed_tokens, request.cache_extra_keys)
        if request.num_computed_tokens < request.num_tokens:
            return
        samples = [request]
        for _ in tokens[1:]:
            if len(self.requests) >= MAX_LIVE + 2:
                break
            child = request.fork(f"r{next(self.ids)}", len(samples))
            self.kv.fork(request, child)
            self.ref.fork(rid, child.request_id)
            self.requests[child.request_id] = child
            self.running.append(child.request_id)
            samples.append(child)
        for sample, token in zip(samples, tokens):
            sample.append_output_token(token)

    @rule(pick=st.integers(0, 99))
    def fail(self, pick: int) -> None:
        """The step raised for this request: it ends, its slots hold nothing usable."""
        if not self.pending:
            return
        request = self._pick(list(self.pending), pick)
        start = request.num_computed_tokens
        for pos in range(start, start + self.pending[request.request_id]):
            self.slots[request.block_ids[pos // BS]][pos % BS] = None
        self._drop(request)
        self.running.remove(request.request_id)
        del self.requests[request.request_id]

    @rule(pick=st.integers(0, 99))
    def preempt(self, pick: int) -> None:
        """Back to waiting, scheduled work (if any) never run: recomputed when it resumes."""
        if not self.running:
            return
        request = self._pick(self.running, pick)
        self._drop(request)
        request.num_computed_tokens = 0
        self.running.remove(request.request_id)
        self.waiting.append(request.request_id)

    @rule(pick=st.integers(0, 99))
    def finish(self, pick: int) -> None:
        if not self._idle_running():
            return
        request = self._pick(self._idle_running(), pick)
        self._drop(request)
        self.running.remove(request.request_id)
        del self.requests[request.request_id]

    @rule()
    def reset_prefix_cache(self) -> None:
        assert self.kv.reset_prefix_cache() == self.ref.reset()

    # ---- after every operation ----------------------------------------------------------------
    @invariant()
    def agrees_with_the_reference(self) -> None:
        pool = self.kv.pool
        assert sorted(self.kv.request_ids()) == sorted(self.ref.tables)
        for rid, table in self.ref.tables.items():
            assert [b.block_id for b in self.kv.blocks_of(rid)] == table, rid
            assert self.requests[rid].block_ids == table, rid
        assert [b.ref_cnt for b in pool.blocks] == self.ref.refs
        assert pool.free_queue.block_ids() == self.ref.free
        cached = {block.block_id: block.token_ids for block in pool.cached.values()}
        assert cached == {b: key[1][-BS:] for key, b in self.ref.index.items()}
        registered = {b.block_id for b in pool.blocks if b.block_hash is not None}
        assert registered == set(self.ref.index.values())

    @invariant()
    def every_read_finds_its_own_kv(self) -> None:
        """Correct by construction, whatever the reference says: cached blocks hold what they
        are registered for; computed positions (cache hits included) hold the request's K/V."""
        for digest, block in self.kv.pool.cached.items():
            held = self.slots[block.block_id]
            assert all(held), f"cached block {block.block_id} holds no completed K/V"
            extra, prefix = held[-1]
            start = len(prefix) - BS
            want = [(extra, prefix[: start + i + 1]) for i in range(BS)]
            assert held == want and start % BS == 0, f"cached block {block.block_id}: other K/V"
            parent = None
            for i in range(0, len(prefix), BS):
                parent = self.kv.hasher(parent, prefix[i : i + BS], extra)
            assert parent == digest, f"cached block {block.block_id}: K/V its digest does not name"
        for rid in self.running:
            request = self.requests[rid]
            tokens = request.all_token_ids
            for pos in range(request.num_computed_tokens):
                held = self.slots[request.block_ids[pos // BS]][pos % BS]
                assert held == (request.cache_extra_keys, tuple(tokens[: pos + 1])), (rid, pos)


# NOTE: 3x the profile's examples: one example takes ~20 ms here, and runs are short.
KVCacheMachine.TestCase.settings = settings(
    max_examples=3 * settings().max_examples, stateful_step_count=80
)
TestKVCacheAgainstReference = KVCacheMachine.TestCase
