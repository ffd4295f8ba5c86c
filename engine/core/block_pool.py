"""The pool of physical KV blocks: ref counts, an O(1) LRU free list and the prefix-cache index.

A block whose ref count drops to zero goes to the tail of the free queue but keeps its hash, so
a later request with the same prefix can take it back (a prefix-cache hit) until it reaches the
head of the queue and is reused for something else (eviction). Blocks are evicted in the order
they were freed: least recently used first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    # Prefix-cache identity (block_hash.py), set when the block is registered; kept while the
    # block sits free.
    block_hash: bytes | None = None
    parent_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None
    # Links of the free queue (None when not in it).
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None

    def reset_hash(self) -> None:
        self.block_hash = None
        self.parent_hash = None
        self.token_ids = None


class FreeBlockQueue:
    """Doubly linked list of free blocks with O(1) pop from the head, append and remove anywhere."""

    def __init__(self, blocks: list[KVBlock]) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        assert block is not None and block is not self._tail, "no free blocks"
        self.remove(block)
        return block

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free_blocks += 1

    def remove(self, block: KVBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"block {block.block_id} is not free"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def block_ids(self) -> list[int]:
        """Free block ids from head (next to be reused) to tail; for tests and debugging."""
        ids = []
        block = self._head.next_free
        while block is not None and block is not self._tail:
            ids.append(block.block_id)
            block = block.next_free
        return ids


class BlockPool:
    """Owns every KV block; hands them out, takes them back, and remembers full blocks by hash."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        assert num_blocks > 0
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, KVBlock] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def can_get_new_blocks(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def get_new_blocks(self, num_blocks: int) -> list[KVBlock]:
        assert self.can_get_new_blocks(num_blocks), (num_blocks, self.num_free_blocks)
        blocks = []
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def touch(self, blocks: list[KVBlock]) -> None:
        """Take a reference on blocks found in the prefix cache (or shared by a fork)."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: list[KVBlock]) -> None:
        """Drop one reference on each block; `blocks` is ordered from first to evict to last."""
        for block in blocks:
            assert block.ref_cnt > 0, f"double free of block {block.block_id}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def get_cached_block(
        self, block_hash: bytes, parent_hash: bytes | None, token_ids: tuple[int, ...]
    ) -> KVBlock | None:
        """The cached block with this content, verified token for token and by its parent's
        digest (NOTE: a 256-bit digest does not collide in practice; checking costs nothing)."""
        block = self.cached.get(block_hash)
        if block is None or block.token_ids != token_ids or block.parent_hash != parent_hash:
            return None
        return block

    def cache_block(
        self,
        block: KVBlock,
        block_hash: bytes,
        parent_hash: bytes | None,
        token_ids: tuple[int, ...],
    ) -> None:
        """Register a full block under its hash (first writer wins; duplicates stay private)."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self.cached:
            return
        block.block_hash = block_hash
        block.parent_hash = parent_hash
        block.token_ids = token_ids
        self.cached[block_hash] = block

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self.cached.get(block.block_hash) is block:
            del self.cached[block.block_hash]
            self.num_evictions += 1
        block.reset_hash()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; refused (False) while any block is in use."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.reset_hash()
        self.cached.clear()
        return True
