"""Speculative decoding: proposers (n-gram prompt lookup; a draft model with its own paged KV
cache), verification by rejection sampling inside the normal step, its configuration and its
counters.

NOTE: the draft model's modules (`draft_model`, `draft_kv`) are imported from their own
modules, not from here: the draft runs on the model runner, which imports `rejection` from
this package.
"""

from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.ngram import NgramProposer
from triode.engine.spec_decode.stats import SpecDecodeStats

__all__ = ["NgramProposer", "SpecDecodeStats", "SpeculativeConfig"]
