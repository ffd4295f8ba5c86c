"""Property-based (stateful) test of the draft model's KV bookkeeping (issue 16) against a
plain reference: sequences of catch-up, propose, verify (accept some drafts, reject the rest),
rollback, preemption/free and pause, on a small pool that often runs short. The reference keeps
each sequence's real tokens and the tokens the draft's cache should hold; after every rule the
cache must hold exactly those, in blocks no other sequence owns, with no block leaked."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from triode.engine.spec_decode.draft_kv import DraftKVCache, cdiv

BLOCK_SIZE = 4
NUM_BLOCKS = 12
TOKENS = st.integers(0, 5)  # a small alphabet: drafts often equal the real tokens by chance


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class DraftKVMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.kv = DraftKVCache(NUM_BLOCKS, BLOCK_SIZE)
        self.real: dict[str, list[int]] = {}  # each sequence's real tokens (append-only)
        self.held: dict[str, list[int]] = {}  # what the cache should hold
        self.drafts: dict[str, list[int]] = {}  # the last proposal, not verified yet
        self.num_ids = 0

    # ---- the reference's expectations -------------------------------------------------------
    def _rollback(self, seq: str) -> None:
        n = self.kv.rollback(seq, self.real[seq])
        if seq in self.held:
            keep = min(_common_prefix(self.held[seq], self.real[seq]), len(self.real[seq]) - 1)
            self.held[seq] = self.held[seq][:keep]
        assert n == len(self.held.get(seq, []))

    # ---- rules ------------------------------------------------------------------------------
    @rule(prompt=st.lists(TOKENS, min_size=1, max_size=14))
    def arrive(self, prompt: list[int]) -> None:
        seq = f"s{self.num_ids}"
        self.num_ids += 1
        self.real[seq] = list(prompt)

    @precondition(lambda self: self.real)
    @rule(data=st.data(), k=st.integers(1, 4), max_catch_up=st.integers(1, 20))
    def propose(self, data: st.DataObject, k: int, max_catch_up: int) -> None:
        """What the proposer does for one sequence: roll back, then feed what the draft has
        not seen (in a chunk when it is longer than the budget) and k-1 drafts."""
        seq = data.draw(st.sampled_from(sorted(self.real)))
        self._rollback(seq)
        held = self.held.get(seq, [])
        unseen = self.real[seq][len(held) :]
        assert unseen  # the last real token is always fed again
        is_chunk = len(unseen) > max_catch_up
        feed = unseen[:max_catch_up] if is_chunk else unseen
        drafts = [] if is_chunk else data.draw(st.lists(TOKENS, min_size=k, max_size=k))
        num_new = len(feed) + len(drafts[:-1])
        held_blocks = len(self.kv.block_ids(seq))
        needed = cdiv(len(held) + num_new, BLOCK_SIZE) - held_blocks
        can = needed <= self.kv.num_free_blocks
        assert self.kv.can_allocate(seq, num_new) == can
        assert self.kv.allocate(seq, num_new) == can
        if not can:
            return
        others = {b for s in self.kv.seq_ids() if s != seq for b in self.kv.block_ids(s)}
        start = len(held)
        slots = self.kv.write(seq, feed) + self.kv.write(seq, drafts[:-1])
        table = self.kv.block_ids(seq)
        for pos, slot in enumerate(slots, start):
            assert slot == table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
            assert slot // BLOCK_SIZE not in others
        self.held[seq] = held + feed + drafts[:-1]
        if not is_chunk:
            self.drafts[seq] = drafts

    @precondition(lambda self: self.drafts)
    @rule(data=st.data(), token=TOKENS)
    def verify(self, data: st.DataObject, token: int) -> None:
        """The served model keeps some drafts and adds one token of its own."""
        seq = data.draw(st.sampled_from(sorted(self.drafts)))
        drafts = self.drafts.pop(seq)
        num_accepted = data.draw(st.integers(0, len(drafts)))
        self.real[seq] += drafts[:num_accepted] + [token]
        if data.draw(st.booleans()):
            self._rollback(seq)  # the engine rolls back after the step (release)

    @precondition(lambda self: self.real)
    @rule(data=st.data(), tokens=st.lists(TOKENS, min_size=1, max_size=3))
    def decode_without_drafts(self, data: st.DataObject, tokens: list[int]) -> None:
        """Steps that did not verify the drafts (the scheduler dropped them, or the load switch
        paused speculation): real tokens arrive, the draft's guesses are stale."""
        seq = data.draw(st.sampled_from(sorted(self.real)))
        self.drafts.pop(seq, None)
        self.real[seq] += tokens

    @precondition(lambda self: self.real)
    @rule(data=st.data(), finished=st.booleans())
    def free(self, data: st.DataObject, finished: bool) -> None:
        """Finished, aborted or preempted (then it catches up from nothing later)."""
        seq = data.draw(st.sampled_from(sorted(self.real)))
        self.kv.free(seq)
        self.held.pop(seq, None)
        self.drafts.pop(seq, None)
        if finished:
            del self.real[seq]

    @rule()
    def pause(self) -> None:
        self.kv.free_all()
        self.held.clear()
        self.drafts.clear()

    # ---- invariants -------------------------------------------------------------------------
    @invariant()
    def holds_what_the_reference_says(self) -> None:
        self.kv.check()
        assert set(self.kv.seq_ids()) <= set(self.real)
        num_held = 0
        for seq in self.kv.seq_ids():
            held = self.held.get(seq, [])
            assert self.kv.token_ids(seq) == held
            assert self.kv.num_computed(seq) == len(held)
            blocks = self.kv.block_ids(seq)
            assert len(blocks) == cdiv(len(held), BLOCK_SIZE)
            num_held += len(blocks)
        for seq in set(self.held) - set(self.kv.seq_ids()):
            assert not self.held[seq]
        assert self.kv.num_free_blocks == NUM_BLOCKS - num_held

    def teardown(self) -> None:
        for seq in list(self.real):
            self.kv.free(seq)
        assert self.kv.num_free_blocks == NUM_BLOCKS


DraftKVMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
test_draft_kv_bookkeeping = DraftKVMachine.TestCase
