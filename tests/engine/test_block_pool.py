"""Block pool and KV-cache manager: exact block ids, ref counts, LRU eviction, prefix hits."""

from __future__ import annotations

from tests.engine.helpers import make_request
from triode.engine.core.block_hash import BlockHasher
from triode.engine.core.block_pool import BlockPool
from triode.engine.core.kv_cache_manager import KVCacheManager
from triode.engine.core.request import Request


def complete_step(kv: KVCacheManager, request: Request, num_tokens: int) -> None:
    """What a completed step does: the tokens are computed and full blocks registered."""
    request.num_computed_tokens += num_tokens
    kv.cache_computed_blocks(request)


def test_pool_hands_out_blocks_in_order_and_frees_to_the_tail():
    pool = BlockPool(6)
    a = pool.get_new_blocks(2)
    b = pool.get_new_blocks(3)
    assert [x.block_id for x in a] == [0, 1]
    assert [x.block_id for x in b] == [2, 3, 4]
    assert pool.num_free_blocks == 1
    pool.free_blocks(list(reversed(a)))
    assert pool.free_queue.block_ids() == [5, 1, 0]
    c = pool.get_new_blocks(2)
    assert [x.block_id for x in c] == [5, 1]


def test_free_queue_removes_from_the_middle_in_constant_time():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(5)
    pool.free_blocks(blocks)
    assert pool.free_queue.block_ids() == [0, 1, 2, 3, 4]
    pool.touch([blocks[2]])  # a prefix-cache hit revives a free block
    assert pool.free_queue.block_ids() == [0, 1, 3, 4]
    assert blocks[2].ref_cnt == 1
    assert pool.num_free_blocks == 4


def test_allocate_append_and_free_exact_ids():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    req = make_request("a", 6)
    assert kv.allocate_slots(req, 6)
    assert req.block_ids == [0, 1]
    req.num_computed_tokens = 6
    for token in (7, 8):  # fills block 1 (slots 6, 7): no new block
        req.append_output_token(token)
        assert kv.allocate_slots(req, 1)
        req.num_computed_tokens += 1
    assert req.block_ids == [0, 1]
    req.append_output_token(9)
    assert kv.allocate_slots(req, 1)  # position 8 starts block 2
    assert req.block_ids == [0, 1, 2]
    other = make_request("b", 3)
    assert kv.allocate_slots(other, 3)
    assert other.block_ids == [3]
    kv.free(req)
    assert req.block_ids == []
    # Freed tail first: block 2 is reused before block 1, then block 0.
    assert kv.pool.free_queue.block_ids()[-3:] == [2, 1, 0]
    assert kv.num_free_blocks == 9


def test_allocation_fails_cleanly_when_the_pool_is_short():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = make_request("a", 8)
    assert kv.allocate_slots(a, 8)
    b = make_request("b", 8)
    assert not kv.can_allocate_slots(b, 8)
    assert not kv.allocate_slots(b, 8)
    assert b.block_ids == [] and kv.num_free_blocks == 1


def test_prefix_cache_hit_shares_full_blocks_and_verifies_tokens():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", list(range(10)))
    assert kv.allocate_slots(first, 10)
    assert kv.get_computed_blocks(make_request("x", list(range(10)))) == ([], 0)  # not yet run
    complete_step(kv, first, 10)  # blocks 0,1 full (cached), block 2 partial
    second = make_request("b", [*range(8), 50, 51, 52])
    hits, num_tokens = kv.get_computed_blocks(second)
    assert [b.block_id for b in hits] == [0, 1] and num_tokens == 8
    assert kv.allocate_slots(second, 3, hits)
    assert second.block_ids == [0, 1, 3]
    assert second.num_computed_tokens == 8
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1, 2, 3)] == [2, 2, 1, 1]
    # Same first block, different second block: only one hit.
    third = make_request("c", [0, 1, 2, 3, 9, 9, 9, 9, 9])
    hits, num_tokens = kv.get_computed_blocks(third)
    assert [b.block_id for b in hits] == [0] and num_tokens == 4


def test_prefix_cache_never_covers_the_last_prompt_token():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", list(range(8)))
    assert kv.allocate_slots(first, 8)
    complete_step(kv, first, 8)
    again = make_request("b", list(range(8)))
    hits, num_tokens = kv.get_computed_blocks(again)
    assert [b.block_id for b in hits] == [0] and num_tokens == 4  # block 1 holds the last token


def test_a_digest_that_matches_is_still_verified_by_tokens_and_parent():
    pool = BlockPool(4)
    (block,) = pool.get_new_blocks(1)
    digest, parent = b"d" * 32, b"p" * 32
    pool.cache_block(block, digest, parent, (1, 2, 3, 4))
    assert pool.get_cached_block(digest, parent, (1, 2, 3, 4)) is block
    assert pool.get_cached_block(digest, parent, (9, 9, 9, 9)) is None
    assert pool.get_cached_block(digest, None, (1, 2, 3, 4)) is None


def test_block_digest_chains_the_parent_and_covers_tokens_and_extra_keys():
    hasher = BlockHasher(b"fixed salt")
    tokens = (5, 6, 7, 8)
    first = hasher(None, tokens)
    assert len(first) == 32 and first == hasher(None, list(tokens))
    assert hasher(hasher(None, (1, 2, 3, 4)), tokens) != first
    assert hasher(None, (5, 6, 7, 9)) != first
    assert hasher(None, tokens, ("lora-a",)) not in (first, hasher(None, tokens, ("lora-b",)))
    # Token ids are encoded at a fixed width: no two token lists share a byte string.
    assert hasher(None, (1, 256)) != hasher(None, (256, 1))


def test_block_digests_are_salted_per_process_unless_a_salt_is_given():
    tokens = (5, 6, 7, 8)
    assert BlockHasher()(None, tokens) != BlockHasher()(None, tokens)
    assert BlockHasher(b"shared")(None, tokens) == BlockHasher(b"shared")(None, tokens)
    assert BlockHasher(b"x" * 100)(None, tokens) == BlockHasher(b"x" * 100)(None, tokens)


def test_requests_with_different_extra_keys_share_no_blocks():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", list(range(10)))
    first.cache_extra_keys = ("adapter-1",)
    assert kv.allocate_slots(first, 10)
    complete_step(kv, first, 10)
    same = make_request("b", list(range(10)))
    same.cache_extra_keys = ("adapter-1",)
    assert kv.get_computed_blocks(same)[1] == 8
    other = make_request("c", list(range(10)))
    other.cache_extra_keys = ("adapter-2",)
    assert kv.get_computed_blocks(other) == ([], 0)
    assert kv.get_computed_blocks(make_request("d", list(range(10)))) == ([], 0)


def test_freed_cached_blocks_are_evicted_in_lru_order():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    a = make_request("a", [1, 2, 3, 4, 5])  # blocks 0,1 full, 2 partial
    b = make_request("b", [7, 8, 9])  # block 3 full, 4 partial
    assert kv.allocate_slots(a, 5) and kv.allocate_slots(b, 3)
    complete_step(kv, a, 5)
    complete_step(kv, b, 3)
    kv.free(a)  # free queue: 5, then a's blocks tail first: 2, 1, 0
    kv.free(b)  # then 4, 3
    assert kv.pool.free_queue.block_ids() == [5, 2, 1, 0, 4, 3]
    c = make_request("c", [20, 21, 22, 23, 24, 25, 26, 27])
    assert kv.allocate_slots(c, 8)
    assert c.block_ids == [5, 2, 1, 0]  # a's cached blocks 1 and 0 evicted, oldest first
    assert kv.pool.num_evictions == 2
    # b's full block 3 is still cached and can be hit.
    again = make_request("d", [7, 8, 9])
    hits, _ = kv.get_computed_blocks(again)
    assert [h.block_id for h in hits] == [3]


def test_fork_shares_blocks_and_copies_the_partial_one_on_write():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    parent = make_request("p", 6, n=3)
    assert kv.allocate_slots(parent, 6)
    parent.num_computed_tokens = 6
    kids = [parent.fork(f"p#{i}", i) for i in (1, 2)]
    for kid in kids:
        kv.fork(parent, kid)
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1)] == [3, 3]
    for seq in (parent, *kids):
        seq.append_output_token(5)
        assert kv.allocate_slots(seq, 1)
    # Two writers copied the shared partial block 1; the last one writes in place.
    assert kv.take_pending_copies() == [(1, 2), (1, 3)]
    assert parent.block_ids == [0, 2]
    assert kids[0].block_ids == [0, 3]
    assert kids[1].block_ids == [0, 1]
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1, 2, 3)] == [3, 1, 1, 1]
    for seq in (parent, *kids):
        kv.free(seq)
    assert kv.num_free_blocks == 10
