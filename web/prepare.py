"""From a request body to what the engine takes, once, in an input-processor worker thread.

`prepare_request` parses the body (orjson + the pydantic schema), checks the model name,
builds the SamplingParams (which check their own ranges), applies the chat template or
tokenizes the prompts, and checks each prompt against the model (`make_input`). It runs in a
worker thread with its own tokenizer (`AsyncEngine.input_processor.run`), never on the event
loop: a body may be 16 MiB. Everything a client can get wrong is caught here or in
`AsyncEngine.submit_all`, before a stream starts, so it can still get a proper status code.

A new request field slots in here: the schema (protocol.py) parses it, `_sampling_params` or
the template variables (`_template_kwargs`) carry it to the engine. Structured output and tools
(web/constraints.py) become one StructuredOutputsParams, compiled here, and a ToolPlan that
the response formatter parses calls with.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from triode.engine import EngineInput, InvalidRequestError, Preprocessor, SamplingParams
from triode.web.constraints import Constraint, ToolPlan, output_constraint, tool_plan
from triode.web.errors import ApiError, bad_request
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
    tools: ToolPlan | None = None  # chat with tools offered (tool_choice not "none")
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
    kind: str,
    body: bytes | dict[str, Any],
    worker: Preprocessor,
    *,
    force_stream: bool = False,
    tool_call_parser: str = "auto",
) -> PreparedRequest:
    """Everything between the body and `submit_all` (runs in a worker thread; raises ApiError
    or the engine's InvalidRequestError naming the request's own field)."""
    request = parse_request(kind, body)
    check_model(worker.info.name, request.model)
    constraint = output_constraint(request)
    plan = None
    if isinstance(request, ChatCompletionRequest):
        plan, forced_call = tool_plan(request, worker.tokenizer, tool_call_parser)
        if forced_call is not None and constraint is not None:
            raise bad_request(
                f"tool_choice: a required or named tool call cannot be combined with "
                f"{constraint.param}",
                "tool_choice",
            )
        constraint = constraint or forced_call
    try:
        if constraint is not None:  # compiled (and cached) here, off the event loop
            worker.compile_structured(constraint.spec, constraint.param)
        if isinstance(request, ChatCompletionRequest):
            num_top = (request.top_logprobs or 0) if request.logprobs else None
            params = _sampling_params(request, request.requested_max_tokens, num_top, constraint)
            ids = worker.encode_chat(
                chat_messages(request.messages),
                request.add_generation_prompt,
                **_template_kwargs(request, plan),
            )
            prompts = [Prompt(ids, None)]
            echo = False
        else:
            num_top = request.logprobs
            params = _sampling_params(request, request.requested_max_tokens, num_top, constraint)
            prompts = [_completion_prompt(worker, p, request) for p in request.prompt]
            echo = request.echo
        # Fail the whole request before any of it is queued.
        inputs = [worker.make_input(p.token_ids, params, request.priority) for p in prompts]
    except InvalidRequestError as exc:
        exc.param = _api_param(exc.param, request)
        if exc.param == "structured_outputs" and constraint is not None:
            exc.param = constraint.param
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
        tools=plan,
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
    """The messages as the chat template expects them (OpenAI's shape)."""
    rendered: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name is not None:
            message["name"] = m.name
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        rendered.append(message)
    return rendered


def _template_kwargs(request: ChatCompletionRequest, plan: ToolPlan | None) -> dict[str, Any]:
    """What the chat template gets beyond the messages: the tools offered (not with
    tool_choice "none"), the request's chat_template_kwargs, and continue_final_message (vLLM's:
    the prompt ends inside the last assistant message, so the reply carries it on)."""
    options: dict[str, Any] = {"chat_template_kwargs": request.chat_template_kwargs}
    if request.continue_final_message:
        options["continue_final_message"] = True
    if plan is not None:
        options["tools"] = plan.tools
        options["tool_format"] = plan.fmt
    return options


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
    constraint: Constraint | None = None,
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
        structured_outputs=constraint.spec if constraint is not None else None,
        logit_bias=dict(request.logit_bias) if request.logit_bias else None,
        allowed_token_ids=request.allowed_token_ids,
        bad_words=request.bad_words,
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
