"""OpenAI's Responses API request (`POST /v1/responses`, and the WebSocket's `response.create`),
validated at the boundary and turned into a chat completion request.

`input` is a string (one user message) or a list of items: messages `{"role", "content"}`
(with or without `"type": "message"`), whose content is a string or a list of `input_text` /
`output_text` parts. `instructions` become a system message; per OpenAI, they are not carried
over from a previous response. Tool calls, images, files and structured output formats are
refused with a 400 (not silently dropped). The conversation sent to the model is the stored
history of `previous_response_id` (its inputs and outputs, all the way back), then this
request's input, so a follow-up turn's prompt starts with the previous turn's tokens and reuses
their KV blocks through the prefix cache.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from triode.web.protocol import _Strict

MAX_INPUT_ITEMS = 4096


class InputMessage(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for index, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("input_text", "output_text", "text"):
                    raise ValueError(
                        f"part {index}: only input_text / output_text parts are supported by "
                        f"this server, got {kind!r}"
                    )
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"part {index}: a text part needs a string 'text'")
                texts.append(part["text"])
            return "".join(texts)
        raise ValueError("must be a string or a list of input_text parts")


class TextFormat(_Strict):
    type: str = "text"


class TextConfig(_Strict):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(_Strict):
    model: str | None = None
    input: list[InputMessage] = Field(min_length=1, max_length=MAX_INPUT_ITEMS)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, le=2)
    top_p: float = 1.0
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    text: TextConfig | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    background: bool | None = None
    # vLLM's and triode's extras, as on the chat route
    seed: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    resumable: bool | None = None
    resume_window_s: float | None = Field(None, gt=0)

    @field_validator("input", mode="before")
    @classmethod
    def _input_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if isinstance(value, list):
            for index, item in enumerate(value):
                kind = item.get("type", "message") if isinstance(item, dict) else None
                if kind != "message":
                    raise ValueError(
                        f"item {index}: only message items are supported by this server, "
                        f"got {kind!r}"
                    )
        return value

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if self.tools:
            raise ValueError("tools: tool calling is not supported by this server")
        if self.text is not None and self.text.format.type != "text":
            raise ValueError("text: only {'format': {'type': 'text'}} is supported")
        if self.background:
            raise ValueError("background: background responses are not supported")
        if (self.resumable or self.resume_window_s) and not self.stream:
            raise ValueError("resumable: only streams are resumable (set stream to true)")
        return self

    def messages(self) -> list[dict[str, str]]:
        """This request's input as chat messages (`developer` is the system role)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content}
            for m in self.input
        ]

    def chat_body(self, history: list[dict[str, str]]) -> dict[str, Any]:
        """The /v1/chat/completions body for `history` (earlier turns) plus this input."""
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        body: dict[str, Any] = {
            "messages": [*system, *history, *self.messages()],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "ignore_eos": self.ignore_eos,
            "stream": True,  # the events are made from the chunks, streamed or not
        }
        for name in ("model", "seed", "user", "resumable", "resume_window_s"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.max_output_tokens is not None:
            body["max_tokens"] = self.max_output_tokens
        return body
