"""The request bodies of the OpenAI routes, validated with pydantic at the boundary.

Strict JSON types (no "5" for 5, no 1 for true), unknown fields ignored (clients send many
optional extras) but fields we cannot honour refused with a 400 rather than silently dropped.
Value ranges of the sampling fields are not checked here: SamplingParams checks them, once,
naming the field; only limits that are this API's own policy (n, the number of stop strings,
temperature's upper bound) live here. `parse_body` turns any validation failure into an
ApiError(400) naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triode.web.errors import ApiError, bad_request
from triode.web.protocol_structured import MessageToolCall, StructuredFields, Tool, ToolChoice

MAX_N = 128
MAX_STOP = 16

TokenId = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingRequest(StructuredFields):
    """Fields shared by /v1/completions and /v1/chat/completions (with the structured-output
    and logit fields of StructuredFields)."""

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, le=2)  # OpenAI's range; SamplingParams checks >= 0
    top_p: float = 1.0
    n: int = Field(1, le=MAX_N)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extras
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    # triode's: keep the stream alive across disconnects (web/resumable.py)
    resumable: bool | None = None
    resume_window_s: float | None = Field(None, gt=0)
    # Accepted for compatibility, refused unless left at a value that changes nothing.
    best_of: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> _SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if (self.resumable or self.resume_window_s) and not self.stream:
            raise ValueError("resumable: only streams are resumable (set stream to true)")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: not supported (use n)")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingRequest):
    # A string, a list of strings, a list of token ids, or a list of token-id lists; normalised
    # to a list of prompts, each a string or a list of token ids.
    prompt: list[Any]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    add_special_tokens: bool = True
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if all(isinstance(p, str) for p in value):
                return value
            if all(_is_token_id(t) for t in value):
                return [value]
            if all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in value):
                return value
        raise ValueError(
            "must be a string, a list of strings, a list of token ids or a list of token-id lists"
            " (none of them empty; token ids are integers >= 0)"
        )

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix: not supported by this server")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo: echo together with logprobs is not supported")
        return self


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # A string, a list of text parts, or null; normalised to a string.
    content: str = ""
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise ValueError(
                        "only text content parts ({'type': 'text', ...}) are supported"
                    )
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs a string 'text'")
                texts.append(part["text"])
            return "".join(texts)
        raise ValueError("must be a string, a list of text parts, or null")


def _check_continue(
    messages: list[ChatMessage], is_continue: bool, add_generation_prompt: bool
) -> None:
    """continue_final_message leaves the last message open: it must be the assistant's, and no
    new turn may be opened after it."""
    if not is_continue:
        return
    if add_generation_prompt:
        raise ValueError(
            "continue_final_message: cannot be combined with add_generation_prompt "
            "(set add_generation_prompt to false)"
        )
    if not messages or messages[-1].role != "assistant":
        raise ValueError("continue_final_message: the last message must be the assistant's")


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    # vLLM's: the prompt ends inside the last (assistant) message, so the reply carries it on.
    continue_final_message: bool = False
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, else "none"
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    functions: list[Any] | None = None  # OpenAI's deprecated form of tools: refused

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        _check_continue(self.messages, self.continue_final_message, self.add_generation_prompt)
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.functions:
            raise ValueError("functions: deprecated by OpenAI and not supported; use tools")
        return self


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt or messages")
        _check_continue(
            self.messages or [], self.continue_final_message, self.add_generation_prompt
        )
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[TokenId]


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


AnyRequest = TypeVar(
    "AnyRequest", CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest
)


def parse_body(model: type[AnyRequest], body: bytes | dict[str, Any]) -> AnyRequest:
    """Validate a JSON body (raw bytes or an already-parsed object); 400 on any problem."""
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _to_api_error(exc) from None


def _to_api_error(exc: ValidationError) -> ApiError:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc and ": " in message:  # model-level checks say "field: why"
        param, _, message = message.partition(": ")
        return bad_request(f"{param}: {message}", param)
    param = ".".join(loc) or None
    if error["type"] == "missing":
        return bad_request(f"{param} is required", param)
    value = error.get("input")
    if isinstance(value, int | float | str | bool) and len(repr(value)) <= 40:
        message = f"{message}, got {value!r}"
    return bad_request(f"{param}: {message}" if param else message, param)
