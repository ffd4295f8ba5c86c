"""From a request body to what the engine takes, once, in an input-processor worker thread.

`prepare_request` parses the body (orjson + the pydantic schema), checks the model name,
builds the SamplingParams (which check their own ranges), applies the chat template or
tokenizes the prompts, and checks each prompt against the model (`make_input`). It runs in a
worker thread with its own tokenizer (`AsyncEngine.input_processor.run`), never on the event
loop: a body may be 16 MiB. Everything a client can get wrong is caught here or in
`AsyncEngine.submit_all`, before a stream starts, so it can still get a proper status code.

A new request field slots in here: the schema (protocol.py) parses it, `_sampling_params` or
the template variables (`_template_kwargs`) carry it to the engine.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from triode.engine import EngineInput, InvalidRequestError, Preprocessor, SamplingParams
from triode.web.errors import ApiError
from triode.web.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, parse_body

CHAT = "chat.completion"
COMPLETION = "completion"
_ID_PREFIXES = {CHAT: "chatcmpl", COMPLETION: "cmpl"}


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    text: str | None  # for echo; None unless needed


@dataclass(slots=True)
class PreparedRequest:
    kind: str  # CHAT or COMPLETION
    response_id: str
    model: str
    created: int
    prompts: list[Prompt]
    engine_inputs: list[EngineInput]  # one per prompt, checked against the model
    params: SamplingParams
    is_stream: bool
    include_usage: bool
    echo: bool
    num_top_logprobs: int | None  # None: no logprobs wanted
    resumable: bool | None = None  # as asked; the server's default decides None
    resume_window_s: float | None = None
    alias: str | None = None  # the client's name for the conversation (the AI SDK's chat id)


def new_response_id(kind: str) -> str:
    """OpenAI-style ids: `chatcmpl-...` / `cmpl-...`, unique per response."""
    return f"{_ID_PREFIXES[kind]}-{uuid.uuid4().hex}"


def parse_request(
    kind: str, body: bytes | dict[str, Any]
) -> CompletionRequest | ChatCompletionRequest:
    if kind == CHAT:
        return parse_body(ChatCompletionRequest, body)
    return parse_body(CompletionRequest, body)


def prepare_request(
    kind: str, body: bytes | dict[str, Any], worker: Preprocessor, *, force_stream: bool = False
) -> PreparedRequest:
    """Everything between the body and `submit_all` (runs in a worker thread; raises ApiError
    or the engine's InvalidRequestError naming the request's own field)."""
    request = parse_request(kind, body)
    check_model(worker.info.name, request.model)
    try:
        if isinstance(request, ChatCompletionRequest):
            num_top = (request.top_logprobs or 0) if request.logprobs else None
            params = _sampling_params(request, request.requested_max_tokens, num_top)
            ids = worker.encode_chat(
                chat_messages(request.messages),
                request.add_generation_prompt,
                **_template_kwargs(request),
            )
            prompts = [Prompt(ids, None)]
            echo = False
        else:
            num_top = request.logprobs
            params = _sampling_params(request, request.requested_max_tokens, num_top)
            prompts = [_completion_prompt(worker, p, request) for p in request.prompt]
            echo = request.echo
        # Fail the whole request before any of it is queued.
        inputs = [worker.make_input(p.token_ids, params, request.priority) for p in prompts]
    except InvalidRequestError as exc:
        exc.param = _api_param(exc.param, request)
        raise
    return PreparedRequest(
        kind=kind,
        response_id=new_response_id(kind),
        model=worker.info.name,
        created=int(time.time()),
        prompts=prompts,
        engine_inputs=inputs,
        params=params,
        is_stream=request.stream or force_stream,
        include_usage=request.include_usage,
        echo=echo,
        num_top_logprobs=num_top,
        resumable=request.resumable,
        resume_window_s=request.resume_window_s,
    )


def check_model(served: str, requested: str | None) -> None:
    """404 unless `requested` (when given) names the served model."""
    if requested is not None and requested != served:
        raise model_not_found(requested, served)


def model_not_found(requested: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{requested}` does not exist. This server serves `{served}`.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the chat template expects them."""
    rendered: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name is not None:
            message["name"] = m.name
        rendered.append(message)
    return rendered


def _template_kwargs(request: ChatCompletionRequest) -> dict[str, Any]:
    """Variables for the chat template beyond the messages (tools, documents, ... go here)."""
    return {}


def _completion_prompt(
    worker: Preprocessor, prompt: str | list[int], request: CompletionRequest
) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(worker.encode(prompt, request.add_special_tokens), prompt)
    return Prompt(prompt, worker.decode(prompt) if request.echo else None)


def _sampling_params(
    request: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    num_top_logprobs: int | None,
) -> SamplingParams:
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


def _api_param(param: str | None, request: CompletionRequest | ChatCompletionRequest) -> str | None:
    """The request field behind an engine-side name (the engine speaks of `prompt`,
    `max_tokens`, `logprobs`; a chat request calls them otherwise)."""
    is_chat = isinstance(request, ChatCompletionRequest)
    if param == "prompt" and is_chat:
        return "messages"
    if param == "logprobs" and is_chat:
        return "top_logprobs"
    if param == "max_tokens" and request.max_completion_tokens is not None:
        return "max_completion_tokens"
    return param
