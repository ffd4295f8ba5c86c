"""DraftKVCache: the draft model's own paged KV cache bookkeeping (block ids only, no tensors).

The draft model keeps K/V for the sequences it proposes for, in a pool of its own: its blocks
never mix with the served model's, so nothing here can touch the served model's prefix cache,
ref counts or preemption. Each sequence holds the token ids whose K/V its blocks hold, in
order (position p of the sequence is slot p of its block table). Three things happen to it:

- `rollback(seq, true_tokens)`: keep only what agrees with the sequence's real tokens (drafts
  the served model rejected, or a next token that differs from the draft fed at its position,
  are dropped), always leaving the last real token to compute (its logits give the next
  draft), and free the blocks past that;
- `allocate(seq, n)` then `write(seq, tokens)`: reserve the slots of a step's forward passes
  up front (all of them, so a step never runs out halfway), then record each pass's tokens;
- `free(seq)`: the request finished, was aborted or preempted, or speculation paused.

NOTE: no prefix caching and no sharing between sequences (n>1 samples and resumed requests
recompute their context in the draft): a small model's prefill is cheap, and blocks that are
never shared can never be written by two owners.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triode.engine.core.block_pool import BlockPool, KVBlock


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(slots=True)
class DraftSequence:
    """One sequence in the draft's cache: its blocks and the tokens whose K/V they hold."""

    blocks: list[KVBlock] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # token_ids[:num_checked] agreed with the real tokens at the last rollback. The real
    # tokens only ever grow, so a later rollback compares only what was written since.
    num_checked: int = 0


class DraftKVCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching=False)
        self._seqs: dict[str, DraftSequence] = {}

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def seq_ids(self) -> list[str]:
        return list(self._seqs)

    def num_computed(self, seq_id: str) -> int:
        """Tokens of the sequence whose K/V the draft's cache holds."""
        seq = self._seqs.get(seq_id)
        return len(seq.token_ids) if seq is not None else 0

    def token_ids(self, seq_id: str) -> list[int]:
        seq = self._seqs.get(seq_id)
        return list(seq.token_ids) if seq is not None else []

    def block_ids(self, seq_id: str) -> list[int]:
        seq = self._seqs.get(seq_id)
        return [b.block_id for b in seq.blocks] if seq is not None else []

    def rollback(self, seq_id: str, true_token_ids: list[int]) -> int:
        """Drop what disagrees with the sequence's real tokens (an append-only list) and the
        last real token itself if it was written; free the blocks past the rest. Returns the
        number of tokens kept."""
        seq = self._seqs.get(seq_id)
        if seq is None:
            return 0
        tokens = seq.token_ids
        keep = min(seq.num_checked, len(tokens))
        limit = min(len(tokens), len(true_token_ids) - 1)
        while keep < limit and tokens[keep] == true_token_ids[keep]:
            keep += 1
        keep = min(keep, max(0, len(true_token_ids) - 1))
        del tokens[keep:]
        seq.num_checked = keep
        num_needed = cdiv(keep, self.block_size)
        if len(seq.blocks) > num_needed:
            extra = seq.blocks[num_needed:]
            del seq.blocks[num_needed:]
            self.pool.free_blocks(list(reversed(extra)))
        return keep

    def can_allocate(self, seq_id: str, num_new_tokens: int) -> bool:
        return self.pool.can_get_new_blocks(self._num_blocks_needed(seq_id, num_new_tokens))

    def allocate(self, seq_id: str, num_new_tokens: int) -> bool:
        """Blocks for `num_new_tokens` more tokens (a new sequence starts empty); False, with
        nothing changed, when the pool is short."""
        num_new = self._num_blocks_needed(seq_id, num_new_tokens)
        if not self.pool.can_get_new_blocks(num_new):
            return False
        seq = self._seqs.setdefault(seq_id, DraftSequence())
        seq.blocks.extend(self.pool.get_new_blocks(num_new))
        return True

    def _num_blocks_needed(self, seq_id: str, num_new_tokens: int) -> int:
        seq = self._seqs.get(seq_id)
        held = len(seq.blocks) if seq is not None else 0
        computed = len(seq.token_ids) if seq is not None else 0
        return max(0, cdiv(computed + num_new_tokens, self.block_size) - held)

    def write(self, seq_id: str, token_ids: list[int]) -> list[int]:
        """Record `token_ids` as the sequence's next positions (their K/V is being written by
        the forward pass now); returns their slots in the draft's cache."""
        seq = self._seqs[seq_id]
        start = len(seq.token_ids)
        assert start + len(token_ids) <= len(seq.blocks) * self.block_size, "not allocated"
        bs = self.block_size
        seq.token_ids.extend(token_ids)
        return [
            seq.blocks[p // bs].block_id * bs + p % bs for p in range(start, start + len(token_ids))
        ]

    def free(self, seq_id: str) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self.pool.free_blocks(list(reversed(seq.blocks)))

    def free_all(self) -> None:
        for seq_id in list(self._seqs):
            self.free(seq_id)

    def check(self) -> None:
        """The bookkeeping's invariants (tests and `enable_invariant_checks`): every block is
        held by at most one sequence, once, with ref count 1; held + free = all; a sequence
        holds exactly the blocks its written tokens need, give or take the reserved ones."""
        owners: dict[int, str] = {}
        for seq_id, seq in self._seqs.items():
            for block in seq.blocks:
                assert block.block_id not in owners, (
                    f"draft block {block.block_id} held by {owners[block.block_id]} and {seq_id}"
                )
                owners[block.block_id] = seq_id
                assert block.ref_cnt == 1, f"draft block {block.block_id} ref {block.ref_cnt}"
            assert len(seq.blocks) >= cdiv(len(seq.token_ids), self.block_size), seq_id
        free = self.pool.free_queue.block_ids()
        assert len(set(free)) == len(free), "a draft block is in the free queue twice"
        assert not set(free) & set(owners), "a held draft block is in the free queue"
        assert len(free) + len(owners) == self.num_blocks, "a draft block leaked"
