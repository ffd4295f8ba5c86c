"""From a validated request body to what the engine takes: prompt token ids and SamplingParams.

Everything a client can get wrong is caught here or in `AsyncEngine.submit`, before a stream
starts, so it can still get a proper status code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from triode.engine.async_engine import AsyncEngine
from triode.engine.errors import ContextLengthError, EngineNotReadyError
from triode.engine.llm import apply_chat_template
from triode.engine.llm_engine import LLMEngine
from triode.engine.sampling.sampling_params import SamplingParams
from triode.web.errors import ApiError, api_error_from, bad_request, service_unavailable
from triode.web.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, parse_body

CHAT = "chat.completion"
COMPLETION = "completion"


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    text: str | None  # for echo; None until needed for token-id prompts


@dataclass(slots=True)
class PreparedRequest:
    kind: str  # CHAT or COMPLETION
    response_id: str
    model: str
    created: int
    prompts: list[Prompt]
    params: SamplingParams
    priority: int
    include_usage: bool
    echo: bool
    num_top_logprobs: int | None  # None: no logprobs wanted


def parse_request(
    kind: str, body: bytes | dict[str, Any]
) -> CompletionRequest | ChatCompletionRequest:
    if kind == CHAT:
        return parse_body(ChatCompletionRequest, body)
    return parse_body(CompletionRequest, body)


def prepare(
    engine: AsyncEngine, request: CompletionRequest | ChatCompletionRequest
) -> PreparedRequest:
    """Check the model, tokenize, and build the sampling parameters (raises ApiError)."""
    core = serving_engine(engine, request.model)
    if isinstance(request, ChatCompletionRequest):
        kind = CHAT
        prompts = [Prompt(_chat_prompt_ids(core.tokenizer, request), None)]
        max_tokens = request.requested_max_tokens  # None: the rest of the context
        num_top = (request.top_logprobs or 0) if request.logprobs else None
        echo = False
    else:
        kind = COMPLETION
        prompts = [_completion_prompt(core.tokenizer, p, request) for p in request.prompt]
        max_tokens = request.requested_max_tokens
        num_top = request.logprobs
        echo = request.echo
    params = _sampling_params(request, max_tokens, num_top)
    for prompt in prompts:  # fail the whole request before any of it is queued
        try:
            core.validate(prompt.token_ids, params)
        except ContextLengthError as exc:
            raise api_error_from(exc) from None
        except ValueError as exc:  # the other checks are all about the prompt itself
            raise bad_request(str(exc), "messages" if kind == CHAT else "prompt") from None
    prefix = "chatcmpl" if kind == CHAT else "cmpl"
    return PreparedRequest(
        kind=kind,
        response_id=engine.new_request_id(prefix),
        model=core.model_name,
        created=int(time.time()),
        prompts=prompts,
        params=params,
        priority=request.priority,
        include_usage=request.include_usage,
        echo=echo,
        num_top_logprobs=num_top,
    )


def serving_engine(engine: AsyncEngine, model: str | None) -> LLMEngine:
    """The engine core, once it serves and `model` (when given) names its model."""
    if engine.dead_reason is not None or not engine.is_ready:
        raise api_error_from(EngineNotReadyError(_not_serving_reason(engine)))
    core = engine.engine
    if model is not None and model != core.model_name:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. This server serves `{core.model_name}`.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    return core


def _not_serving_reason(engine: AsyncEngine) -> str:
    if engine.dead_reason is not None:
        return f"the engine failed: {engine.dead_reason}"
    return "the engine is still loading" if not engine.is_ready else "the engine has shut down"


def _chat_prompt_ids(tokenizer: Any, request: ChatCompletionRequest) -> list[int]:
    return chat_prompt_ids(tokenizer, request.messages, request.add_generation_prompt)


def chat_prompt_ids(
    tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool
) -> list[int]:
    """The conversation rendered with the model's chat template, as token ids (400 if refused)."""
    rendered: list[dict[str, str]] = []
    for m in messages:
        message = {"role": m.role, "content": m.content}
        if m.name is not None:
            message["name"] = m.name
        rendered.append(message)
    try:
        return apply_chat_template(tokenizer, rendered, add_generation_prompt)
    except Exception as exc:  # jinja raises for conversations the template refuses
        raise bad_request(f"the chat template rejected the messages: {exc}", "messages") from None


def _completion_prompt(
    tokenizer: Any, prompt: str | list[int], request: CompletionRequest
) -> Prompt:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special_tokens=request.add_special_tokens)
        return Prompt(ids, prompt)
    return Prompt(list(prompt), tokenizer.decode(prompt) if request.echo else None)


def _sampling_params(
    request: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    num_top_logprobs: int | None,
) -> SamplingParams:
    try:
        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=request.repetition_penalty,
            seed=request.seed,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            stop=list(request.stop),
            stop_token_ids=list(request.stop_token_ids),
            include_stop_str_in_output=request.include_stop_str_in_output,
            logprobs=num_top_logprobs,
            skip_special_tokens=request.skip_special_tokens,
        )
    except ValueError as exc:
        raise api_error_from(exc) from None


def service_draining() -> ApiError:
    return service_unavailable("the server is shutting down", "server_shutting_down", 1)
