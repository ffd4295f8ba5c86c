"""Speculative decoding: proposers (n-gram prompt lookup), verification by rejection sampling
inside the normal step, its configuration and its counters."""

from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.ngram import NgramProposer
from triode.engine.spec_decode.stats import SpecDecodeStats

__all__ = ["NgramProposer", "SpecDecodeStats", "SpeculativeConfig"]
