"""Incremental detokenization with the real SmolLM2 tokenizer: multi-byte text never comes
out as U+FFFD halves, and the deltas concatenate to the full decode."""

from __future__ import annotations

import pytest

from triode.streaming.detokenizer import IncrementalDetokenizer, TokenDecoder

TEXTS = [
    "日本語 😀 hello",
    "Zürich, São Paulo, Kraków — naïve café ☕",
    "emoji run: 👩‍👩‍👧‍👦🇫🇷🎉 done",
    "  leading spaces and\ttabs\n\nnew lines",
    "Ελληνικά και русский язык, 한국어, العربية",
    "math: ∑ᵢ xᵢ² ≤ ∞",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_equal_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = tokenizer.encode("Say something:", add_special_tokens=False)
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer), prompt)
    deltas = [detok.add_tokens([t]) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_naive_decoding_would_garble(tokenizer):
    # The reason the detokenizer exists: per-token decoding splits characters.
    ids = tokenizer.encode("日本語 😀", add_special_tokens=False)
    assert "\ufffd" in "".join(tokenizer.decode([t]) for t in ids)


def test_several_tokens_per_step(tokenizer):
    text = "Kraków 😀 naïve " * 3
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer))
    out = "".join(detok.add_tokens(ids[i : i + 3]) for i in range(0, len(ids), 3))
    assert out + detok.flush() == text


def test_truncated_character_is_flushed_as_the_full_decode_shows_it(tokenizer):
    ids = tokenizer.encode("ok 😀", add_special_tokens=False)[:-1]  # cut inside the emoji
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer))
    out = "".join(detok.add_tokens([t]) for t in ids)
    assert "\ufffd" not in out
    assert out + detok.flush() == tokenizer.decode(ids)


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("hi", add_special_tokens=False) + [tokenizer.eos_token_id]
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer, skip_special_tokens=True))
    assert "".join(detok.add_tokens([t]) for t in ids) + detok.flush() == "hi"
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer, skip_special_tokens=False))
    assert "".join(detok.add_tokens([t]) for t in ids) + detok.flush() == "hi<|im_end|>"
