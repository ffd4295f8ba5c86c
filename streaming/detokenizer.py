"""Incremental detokenization: token ids in, stable text out, one step at a time.

Decoding token by token garbles text: a character whose UTF-8 bytes span several tokens comes
out as U+FFFD halves, and some tokenizers drop or add spaces at token boundaries. So we decode a
short window of tokens that starts a few tokens back (`prefix_offset`) and emit only what the
window adds beyond the text already emitted (`read_offset`); while the window's text ends in
U+FFFD a character is incomplete and nothing is emitted. Concatenated, the emitted pieces equal
decoding all the output tokens at once.
"""

from __future__ import annotations

from typing import Any

# Prompt tokens kept as context for the first window (leading-space rules of SentencePiece).
_PROMPT_CONTEXT = 5
_REPLACEMENT = "\ufffd"


class TokenDecoder:
    """Fast `ids -> str` for a transformers tokenizer (the Rust backend where there is one)."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        backend = getattr(tokenizer, "_tokenizer", None)
        cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.skip_special_tokens = skip_special_tokens
        if backend is not None and hasattr(backend, "decode") and not cleanup:
            self._decode = lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
        else:
            self._decode = lambda ids: tokenizer.decode(
                ids, skip_special_tokens=skip_special_tokens
            )

    def __call__(self, ids: list[int]) -> str:
        return self._decode(ids)


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text deltas (see the module docstring)."""

    def __init__(self, decoder: TokenDecoder, prompt_token_ids: list[int] | None = None) -> None:
        self._decode = decoder
        context = list(prompt_token_ids[-_PROMPT_CONTEXT:]) if prompt_token_ids else []
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._num_context = len(context)
        self.text = ""

    def add_tokens(self, token_ids: list[int]) -> str:
        """Append new ids; return the newly stable text (may be empty)."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""  # nothing new yet, or a multi-byte character is still incomplete
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """The text still held back at the end (an incomplete character decodes as U+FFFD,
        exactly as a full decode would show it)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta
