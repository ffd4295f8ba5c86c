"""Constrained decoding with llguidance: `GrammarCompiler` (constraint -> cached matcher) and
`StructuredOutputManager` (per-sample matchers, each step's token bitmask)."""
