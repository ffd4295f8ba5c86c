"""SamplingParams: how one request picks its tokens and when it stops.

The field names and defaults follow vLLM's, so code written for vLLM's offline API reads the same
here. Every invalid value raises InvalidRequestError (a ValueError) whose `param` names the field;
the web layer turns it into a 400. This is the one place these ranges are checked: the HTTP
schema checks only JSON types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from triode.engine.errors import InvalidRequestError
from triode.engine.sampling.structured_outputs import StructuredOutputsParams

# Temperatures below this are treated as greedy (argmax), as in vLLM.
GREEDY_EPS = 1e-5
MAX_LOGPROBS = 20
# logit_bias values are clamped to this range by OpenAI; -100 bans the token outright here.
MAX_LOGIT_BIAS = 100.0


@dataclass(slots=True)
class SamplingParams:
    """Sampling and stopping parameters of one request (all samples of an n>1 request share them)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the model's context length
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # number of top logprobs per token besides the sampled one
    skip_special_tokens: bool = True
    # Constrained decoding: the output must match a JSON schema, regex, choice or grammar.
    structured_outputs: StructuredOutputsParams | None = None
    # token id -> bias added to its logit, in [-100, 100]; -100 bans the token.
    logit_bias: dict[int, float] | None = None
    # Only these tokens may be sampled (vLLM).
    allowed_token_ids: list[int] | None = None
    # Words that must not be generated (vLLM): each is banned as the token sequences it
    # tokenizes to, with and without a leading space (`bad_words_token_ids`, filled from the
    # tokenizer by `resolve_bad_words` before the request reaches the engine).
    bad_words: list[str] | None = None
    bad_words_token_ids: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.logit_bias is not None:
            self.logit_bias = _int_keys(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        elif self.bad_words is not None:
            self.bad_words = list(self.bad_words)
        self._validate()

    def _validate(self) -> None:
        # NOTE: every range is written as `not (lo <= x <= hi)` so that NaN fails it too.
        def bad(name: str, why: str) -> InvalidRequestError:
            return InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", name)

        if not _is_int(self.n) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if not _is_number(self.temperature) or not self.temperature >= 0:
            raise bad("temperature", "must be >= 0")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "must be -1, 0 (disabled) or a positive integer")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        if not _is_number(self.presence_penalty) or not -2 <= self.presence_penalty <= 2:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if not _is_number(self.frequency_penalty) or not -2 <= self.frequency_penalty <= 2:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise bad("repetition_penalty", "must be in (0, 10]")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise bad("seed", "must be an integer in [0, 2**63)")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "must be an integer >= 1")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens must be <= max_tokens, got min_tokens={self.min_tokens} "
                f"and max_tokens={self.max_tokens}",
                "min_tokens",
            )
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be non-empty strings")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative integers")
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise bad("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}]")
        self._validate_logit_controls()

    def _validate_logit_controls(self) -> None:
        """Types and ranges that need no model; token ids are checked against the vocabulary
        by `make_engine_input`."""
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise InvalidRequestError(
                "structured_outputs must be a StructuredOutputsParams", "structured_outputs"
            )
        for token, bias in (self.logit_bias or {}).items():
            if not _is_token_id(token):
                raise InvalidRequestError(
                    f"logit_bias keys must be token ids (integers >= 0), got {token!r}",
                    "logit_bias",
                )
            if not _is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise InvalidRequestError(
                    f"logit_bias values must be numbers in [-100, 100], got {bias!r} for "
                    f"token {token}",
                    "logit_bias",
                )
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids or not all(_is_token_id(t) for t in self.allowed_token_ids)
        ):
            raise InvalidRequestError(
                "allowed_token_ids must be a non-empty list of token ids (integers >= 0)",
                "allowed_token_ids",
            )
        if self.bad_words is not None and not all(isinstance(w, str) and w for w in self.bad_words):
            raise InvalidRequestError("bad_words must be non-empty strings", "bad_words")
        if self.bad_words_token_ids is not None and not all(
            isinstance(seq, list) and seq and all(_is_token_id(t) for t in seq)
            for seq in self.bad_words_token_ids
        ):
            raise InvalidRequestError(
                "bad_words_token_ids must be non-empty lists of token ids", "bad_words"
            )

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0
            or self.frequency_penalty != 0
            or self.repetition_penalty != 1.0
        )

    @property
    def has_logit_controls(self) -> bool:
        """True when logit_bias, allowed_token_ids or bad words change this row's logits."""
        return bool(self.logit_bias or self.allowed_token_ids or self.bad_words_token_ids)

    def token_ids_to_check(self) -> dict[str, list[int]]:
        """Every token id this request carries, by field, for the vocabulary check."""
        fields = {
            "stop_token_ids": self.stop_token_ids,
            "logit_bias": list(self.logit_bias or ()),
            "allowed_token_ids": self.allowed_token_ids or [],
            "bad_words": [t for seq in self.bad_words_token_ids or () for t in seq],
        }
        return {name: ids for name, ids in fields.items() if ids}

    def clone(self, **changes: object) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["stop"] = list(self.stop)
        values["stop_token_ids"] = list(self.stop_token_ids)
        values.update(changes)
        return SamplingParams(**values)  # type: ignore[arg-type]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_token_id(value: object) -> bool:
    return _is_int(value) and value >= 0  # type: ignore[operator]


def _int_keys(bias: Any) -> Any:
    """logit_bias as {int: float}; JSON gives the keys as strings ("50256")."""
    if not isinstance(bias, dict):
        raise InvalidRequestError("logit_bias must be a mapping of token id to bias", "logit_bias")
    out: dict[Any, Any] = {}
    for key, value in bias.items():
        if isinstance(key, str) and key.strip().isdigit():
            key = int(key)
        out[key] = value
    return out
