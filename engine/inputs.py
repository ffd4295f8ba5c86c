"""What crosses the engine's front door: the model's description and a validated request.

`ModelInfo` is the immutable description of the served model that callers need (its name,
context length, vocabulary size, end-of-sequence ids, where its tokenizer lives), so nothing
outside the engine has to reach into it. `make_engine_input` is the one place where a prompt
and its SamplingParams are checked against the model; an `EngineInput` is what it returns, and
the only thing the engine queues. Both are plain, picklable data: the engine core may later run
in a process of its own behind the actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

from triode.engine.errors import ContextLengthError, InvalidRequestError
from triode.engine.sampling.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The served model, as the API and the input processor see it."""

    name: str  # the name clients use (`model` in requests)
    folder: str  # the local folder with config.json, the weights and the tokenizer files
    max_model_len: int  # prompt + completion tokens, at most
    vocab_size: int  # valid token ids are [0, vocab_size)
    eos_token_ids: tuple[int, ...]  # ids that end a generation (unless ignore_eos)
    # What the weights are served as (engine.quant.info.WeightsInfo.as_dict: quantization,
    # dtype, bytes, formats), for /v1/models.
    weights: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EngineInput:
    """One prompt, checked against the model: what `LLMEngine.add_input` and
    `AsyncEngine.submit` take. Build it with `make_engine_input`."""

    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never None, never past the context length
    priority: int = 0


def make_engine_input(
    info: ModelInfo, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
) -> EngineInput:
    """Check every id the request carries against the vocabulary and the lengths against the
    context; raise InvalidRequestError / ContextLengthError naming the field.

    NOTE: this is the only check of a prompt against the model. It is O(prompt length), so the
    server runs it in the input processor's worker threads, never on the event loop.
    """
    num_prompt = len(prompt_token_ids)
    if num_prompt == 0:
        raise InvalidRequestError("the prompt must contain at least one token", "prompt")
    limit = info.max_model_len
    if num_prompt >= limit:
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"has {num_prompt} tokens, which leaves no room for a completion. Please reduce "
            "the length of the prompt.",
            param="prompt",
        )
    if params.max_tokens is None:
        max_tokens = limit - num_prompt
    elif num_prompt + params.max_tokens > limit:
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{num_prompt + params.max_tokens} tokens ({num_prompt} in the prompt, "
            f"{params.max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    else:
        max_tokens = params.max_tokens
    # Only now, with the length known to fit, the O(prompt) scan (min/max run in C).
    vocab = info.vocab_size
    _check_ids(prompt_token_ids, "prompt")
    if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab:
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
    # stop_token_ids, logit_bias keys, allowed_token_ids, bad words' tokens: all index tensors.
    for name, ids in params.token_ids_to_check().items():
        if max(ids) >= vocab:
            bad = next(t for t in ids if t >= vocab)
            raise InvalidRequestError(
                f"{name}: token id {bad} is out of range; the vocabulary has {vocab} tokens "
                f"(ids 0 to {vocab - 1})",
                name,
            )
    return EngineInput(prompt_token_ids, params, max_tokens, priority)


def _check_ids(ids: Sequence[object], param: str) -> None:
    """Token ids are integers (numpy's too): anything else never reaches a tensor (the
    offline API takes any list; SamplingParams checks its own ids)."""
    if not all(type(t) is int for t in ids) and not all(
        isinstance(t, Integral) and not isinstance(t, bool) for t in ids
    ):
        raise InvalidRequestError(f"{param} must be integer token ids", param)
