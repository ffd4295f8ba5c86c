"""Request fields for structured output and tool calling (OpenAI's and vLLM's names).

Only JSON shapes are checked here; what they mean (a schema that compiles, a tool_choice that
names an offered tool, token ids inside the vocabulary) is checked in web/constraints.py and
the engine's input processor, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class JsonSchemaFormat(_Strict):
    """response_format.json_schema."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (
            self.json_schema is None or self.json_schema.schema_ is None
        ):
            raise ValueError("response_format: type json_schema needs json_schema.schema")
        return self


class FunctionDefinition(_Strict):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class _FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _CalledFunction(_Strict):
    name: str
    arguments: str = "{}"  # the JSON text of the arguments, as OpenAI sends it back


class MessageToolCall(_Strict):
    """An earlier assistant turn's tool call, sent back in `messages`."""

    id: str = ""
    type: Literal["function"] = "function"
    function: _CalledFunction


class StructuredFields(_Strict):
    """Fields that constrain or bias the output, on both /v1/completions and
    /v1/chat/completions (and the WebSocket's requests)."""

    response_format: ResponseFormat | None = None
    # vLLM's names (one of these, or structured_outputs, or response_format).
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None
    # Accepted and ignored: triode has one grammar engine and its own whitespace rule.
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    # token id (as a JSON string key) -> bias in [-100, 100]
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _integer_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if not (isinstance(key, str) and key.strip().isdigit()):
                    raise ValueError(f"keys must be token ids, got {key!r}")
        return value

    @field_validator("bad_words", mode="before")
    @classmethod
    def _word_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
