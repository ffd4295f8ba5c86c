"""Counters of speculative decoding: how many drafts were proposed and accepted, per position."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpecDecodeStats:
    """Totals since the engine started (plain data: it crosses the actor boundary)."""

    num_drafts: int = 0  # verifications: one per speculating request per step
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # accepted_per_position[j]: verifications whose draft j was accepted.
    accepted_per_position: list[int] = field(default_factory=list)
    # drafted_per_position[j]: verifications that proposed a draft j.
    drafted_per_position: list[int] = field(default_factory=list)
    num_steps_speculating: int = 0  # steps with speculation switched on
    num_steps_paused: int = 0  # steps where load switched it off

    def record(self, num_draft_tokens: int, num_accepted: int) -> None:
        assert 0 <= num_accepted <= num_draft_tokens
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        for counts, upto in (
            (self.drafted_per_position, num_draft_tokens),
            (self.accepted_per_position, num_accepted),
        ):
            if len(counts) < upto:
                counts.extend([0] * (upto - len(counts)))
            for j in range(upto):
                counts[j] += 1

    def copy(self) -> SpecDecodeStats:
        return SpecDecodeStats(
            self.num_drafts,
            self.num_draft_tokens,
            self.num_accepted_tokens,
            list(self.accepted_per_position),
            list(self.drafted_per_position),
            self.num_steps_speculating,
            self.num_steps_paused,
        )

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verification: the accepted drafts plus the model's own one."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def position_rates(self) -> list[float]:
        """Acceptance rate of draft j among verifications that proposed one."""
        accepted = self.accepted_per_position
        return [
            (accepted[j] if j < len(accepted) else 0) / drafted
            for j, drafted in enumerate(self.drafted_per_position)
        ]
