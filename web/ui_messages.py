"""The Vercel AI SDK's chat request body, turned into a chat completion request.

The SDK's transports (`DefaultChatTransport`, `WebSocketChatTransport`) send `{"id": CHAT_ID,
"messages": [UIMessage...], "trigger": ..., "messageId": ..., ...the app's own body fields}`. A
UIMessage is `{"id", "role": "system" | "user" | "assistant", "parts": [...]}`; its `text`
parts are joined into the chat message's content. Parts that carry nothing for a text model
and that the SDK adds by itself (`step-start`, `reasoning`, sources, `data-*`) are skipped;
parts that would change the answer but cannot be honoured here (files, tool calls) are refused
with a 400 rather than dropped. The app's own body fields are the chat completion's sampling
fields (`max_tokens`, `temperature`, ..., `resumable`), validated as on /v1/chat/completions.

`prepare_ui_chat` runs in an input-processor worker thread, like `prepare_request`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from triode.engine import Preprocessor
from triode.web.errors import bad_request
from triode.web.prepare import CHAT, PreparedRequest, prepare_request
from triode.web.protocol import _Strict, parse_body

# Part types the SDK puts in messages that say nothing a text model could use.
_SKIPPED_PARTS = ("step-start", "reasoning", "source-url", "source-document")
MAX_CHAT_ID_LENGTH = 256
_SDK_FIELDS = ("id", "messages", "trigger", "messageId", "metadata", "headers", "body")


class UIMessage(_Strict):
    id: str = ""
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = Field(min_length=0)

    @field_validator("parts")
    @classmethod
    def _known_parts(cls, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, part in enumerate(parts):
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"part {index}: a text part needs a string 'text'")
            elif not isinstance(kind, str) or not (
                kind in _SKIPPED_PARTS or kind.startswith("data-")
            ):
                raise ValueError(
                    f"part {index}: parts of type {kind!r} are not supported by this server "
                    "(only text)"
                )
        return parts

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if p.get("type") == "text")


class UIChatRequest(_Strict):
    id: str = Field(min_length=1, max_length=MAX_CHAT_ID_LENGTH)
    messages: list[UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None  # the SDK's spelling


def ui_chat_body(body: bytes | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the chat id, the equivalent /v1/chat/completions body, always streamed)."""
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    request = parse_body(UIChatRequest, body)
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in _SDK_FIELDS}
    chat["messages"] = [{"role": m.role, "content": m.text} for m in request.messages]
    chat["stream"] = True
    return request.id, chat


def prepare_ui_chat(body: bytes | dict[str, Any], worker: Preprocessor) -> PreparedRequest:
    """`prepare_request` for an AI SDK body; the chat id becomes the request's alias."""
    chat_id, chat = ui_chat_body(body)
    prepared = prepare_request(CHAT, chat, worker)
    prepared.alias = chat_id
    return prepared
