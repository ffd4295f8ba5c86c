"""KVCacheManager: maps each request's logical blocks to physical ones in the BlockPool.

It answers three questions for the scheduler: how much of a new request's prompt is already in
the prefix cache (`get_computed_blocks`), whether a request can get the slots for its next tokens
(`can_allocate_slots`, beside the mutation `allocate_slots`), and how to give everything back
(`free`). n>1 samples share blocks through `fork`; a shared, partly filled block is copied
before anyone writes into it (copy-on-write), and the copies to make are handed to the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from triode.engine.core.block_hash import BlockHasher
from triode.engine.core.block_pool import BlockPool, KVBlock
from triode.engine.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(slots=True)
class PrefixCacheStats:
    """Prefix-cache lookups and hits, counted in tokens."""

    num_queried_tokens: int = 0
    num_hit_tokens: int = 0


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        hash_salt: bytes | None = None,
    ) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        # Random per process unless a salt is given (block_hash.py says why).
        self.hasher = BlockHasher(hash_salt)
        # Each request's blocks, in logical order (request.block_ids mirrors the ids).
        self._blocks: dict[str, list[KVBlock]] = {}
        # How many of a request's leading full blocks are registered in the prefix cache.
        self._num_cached_blocks: dict[str, int] = {}
        self.pending_copies: list[tuple[int, int]] = []
        self.stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    # ---- prefix cache -------------------------------------------------------------------
    def _block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        """The chained digests of the request's first `num_blocks` full blocks (memoized: a
        full block's tokens never change)."""
        hashes = request.block_hashes
        bs = self.block_size
        tokens = request.all_token_ids
        extra_keys = request.cache_extra_keys
        while len(hashes) < num_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(self.hasher(parent, tokens[i * bs : (i + 1) * bs], extra_keys))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest cached prefix of a request holding no blocks, and its length in tokens.

        At least the last token is always left to compute: its logits give the next token.
        """
        assert not self._blocks.get(request.request_id), "request already holds blocks"
        if not self.enable_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hashes = self._block_hashes(request, max_blocks)
        bs = self.block_size
        tokens = request.all_token_ids
        hits: list[KVBlock] = []
        for i in range(max_blocks):
            parent = hashes[i - 1] if i else None
            block = self.pool.get_cached_block(
                hashes[i], parent, tuple(tokens[i * bs : (i + 1) * bs])
            )
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * bs

    def record_prefix_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's lookup (failed admissions are retried, not counted)."""
        if self.enable_caching:
            self.stats.num_queried_tokens += num_queried_tokens
            self.stats.num_hit_tokens += num_hit_tokens

    # ---- allocation ---------------------------------------------------------------------
    def _num_blocks_needed(
        self, request: Request, num_new_tokens: int, num_computed_blocks: int
    ) -> int:
        """New blocks (including a copy-on-write copy) needed to compute `num_new_tokens` more."""
        blocks = self._blocks.get(request.request_id, [])
        num_computed = request.num_computed_tokens + num_computed_blocks * self.block_size
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_new = max(0, num_required - len(blocks) - num_computed_blocks)
        if self._needs_copy_on_write(request, blocks):
            num_new += 1
        return num_new

    def _needs_copy_on_write(self, request: Request, blocks: list[KVBlock]) -> bool:
        return (
            bool(blocks)
            and request.num_computed_tokens % self.block_size != 0
            and blocks[-1].ref_cnt > 1
        )

    def can_allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[KVBlock] = ()
    ) -> bool:
        num_new = self._num_blocks_needed(request, num_new_tokens, len(computed_blocks))
        # Cache hits sitting in the free queue stop being free once we take them.
        num_revived = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        return self.pool.can_get_new_blocks(num_new + num_revived)

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[KVBlock] = ()
    ) -> bool:
        """Give the request the slots for its next `num_new_tokens`; False if the pool is short.

        `computed_blocks` are prefix-cache hits for a request holding no blocks yet; taking them
        advances `request.num_computed_tokens` past them.
        """
        if not self.can_allocate_slots(request, num_new_tokens, computed_blocks):
            return False
        req_id = request.request_id
        blocks = self._blocks.setdefault(req_id, [])
        if computed_blocks:
            assert not blocks
            self.pool.touch(list(computed_blocks))
            blocks.extend(computed_blocks)
            request.num_computed_tokens = len(blocks) * self.block_size
        if self._needs_copy_on_write(request, blocks):
            shared = blocks[-1]
            (copy,) = self.pool.get_new_blocks(1)
            self.pending_copies.append((shared.block_id, copy.block_id))
            self.pool.free_blocks([shared])
            blocks[-1] = copy
        total = request.num_computed_tokens + num_new_tokens
        num_new = cdiv(total, self.block_size) - len(blocks)
        if num_new > 0:
            blocks.extend(self.pool.get_new_blocks(num_new))
        request.block_ids = [b.block_id for b in blocks]
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Register the request's full blocks below `num_computed_tokens` in the prefix cache.

        NOTE: call this only once a step that wrote those blocks' K/V has completed (the
        scheduler does, in `update_from_output`): a block registered earlier could be handed
        to another request, or back to this one after a preemption, before anything was
        written into it (issue 10's poisoning bug). Only tokens counted in
        `num_computed_tokens` are registered, so work that must not be kept (rejected
        speculative tokens, say) stays out by not being counted.
        """
        if not self.enable_caching:
            return
        blocks = self._blocks.get(request.request_id, [])
        num_full = min(request.num_computed_tokens // self.block_size, len(blocks))
        start = self._num_cached_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._block_hashes(request, num_full)
        bs = self.block_size
        tokens = request.all_token_ids
        for i in range(start, num_full):
            parent = hashes[i - 1] if i else None
            self.pool.cache_block(
                blocks[i], hashes[i], parent, tuple(tokens[i * bs : (i + 1) * bs])
            )
        self._num_cached_blocks[request.request_id] = num_full

    def fork(self, parent: Request, child: Request) -> None:
        """The child shares every block of the parent (copy-on-write protects partial blocks)."""
        blocks = list(self._blocks.get(parent.request_id, []))
        self.pool.touch(blocks)
        self._blocks[child.request_id] = blocks
        self._num_cached_blocks[child.request_id] = self._num_cached_blocks.get(
            parent.request_id, 0
        )
        child.block_ids = [b.block_id for b in blocks]

    def free(self, request: Request) -> None:
        """Return the request's blocks; the tail goes first into the free queue so it is evicted
        before the (more shareable) head."""
        blocks = self._blocks.pop(request.request_id, [])
        self._num_cached_blocks.pop(request.request_id, None)
        self.pool.free_blocks(list(reversed(blocks)))
        request.block_ids = []

    def take_pending_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def num_held_blocks(self, request_id: str) -> int:
        return len(self._blocks.get(request_id, []))

    def request_ids(self) -> list[str]:
        """Ids of the requests holding blocks (for the invariant checker)."""
        return list(self._blocks)

    def blocks_of(self, request_id: str) -> list[KVBlock]:
        """A request's blocks in logical order (a copy; for the invariant checker)."""
        return list(self._blocks.get(request_id, []))

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
