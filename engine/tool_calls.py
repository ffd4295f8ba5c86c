"""How a model writes tool calls: the text formats, which one a model uses, and the grammar
that forces a valid call (`tool_choice` "required" or a named function).

Two formats, as vLLM names its parsers:
- "hermes": each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  (Hermes, Qwen 2/2.5/3, SmolLM-family templates); several calls follow each other.
- "llama3_json": the answer is `{"name": ..., "parameters": {...}}` (Llama 3.1+ templates),
  several calls separated by "; ".

The parser that turns text back into OpenAI `tool_calls` lives in web/ (tool_parser.py); the
chat template renderer (engine/chat_template.py) uses `format_call` for past calls.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from triode.engine.structured.compiler import json_schema_options
from triode.engine.structured.json_schema import prepare_schema


@dataclass(frozen=True, slots=True)
class ToolCallFormat:
    name: str
    start: str  # text before each call's JSON ("" when the JSON stands alone)
    end: str  # text after it
    separator: str  # between consecutive calls
    arguments_key: str  # where the arguments object goes ("arguments" or "parameters")


HERMES = ToolCallFormat("hermes", "<tool_call>\n", "\n</tool_call>", "\n", "arguments")
LLAMA3_JSON = ToolCallFormat("llama3_json", "", "", "; ", "parameters")
TOOL_CALL_FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON)}


def detect_tool_call_format(tokenizer: Any) -> ToolCallFormat:
    """Llama 3's JSON form for Llama 3 chat templates, Hermes-style for everything else."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = json.dumps(template)
    if "<|start_header_id|>" in template and "<tool_call>" not in template:
        return LLAMA3_JSON
    return HERMES


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The `function` object of an OpenAI tool ({"type": "function", "function": {...}})."""
    return tool.get("function", tool)


def format_call(fmt: ToolCallFormat, name: str, arguments: Any) -> str:
    """One call as the model writes it (for rendering earlier calls into the prompt)."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else keep the client's text as it is
            arguments = json.loads(arguments)
    body = json.dumps({"name": name, fmt.arguments_key: arguments}, ensure_ascii=False)
    return f"{fmt.start}{body}{fmt.end}"


def _call_schema(fmt: ToolCallFormat, function: dict[str, Any], at: str) -> dict[str, Any]:
    """The schema of one call, to be placed at JSON pointer `at` of the whole schema."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    arguments_at = f"{at}/properties/{fmt.arguments_key}"
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            fmt.arguments_key: rebase_refs(prepare_schema(parameters), arguments_at),
        },
        "required": ["name", fmt.arguments_key],
        "additionalProperties": False,
    }


def tool_call_grammar(
    fmt: ToolCallFormat,
    tools: list[dict[str, Any]],
    tokenizer: Any,
    *,
    only: str | None = None,
    parallel: bool = True,
) -> str:
    """A Lark grammar (llguidance's dialect) accepting exactly: one call of function `only`, or
    one or more calls (just one unless `parallel`) of any of `tools`, each with arguments valid
    for that function's JSON schema."""
    functions = [function_of(t) for t in tools]
    if only is not None:
        functions = [f for f in functions if f["name"] == only]
        parallel = False
    if len(functions) == 1:
        schemas = [_call_schema(fmt, functions[0], "")]
    else:
        schemas = [_call_schema(fmt, f, f"/anyOf/{i}") for i, f in enumerate(functions)]
    schema: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema["x-guidance"] = json_schema_options(strict=False)
    call = " ".join(
        part
        for part in (_literal(fmt.start, tokenizer), "body", _literal(fmt.end, tokenizer))
        if part
    )
    rules = [
        f"start: call ({_literal(fmt.separator, tokenizer)} call)*" if parallel else "start: call",
        f"call: {call}",
        f"body: %json {json.dumps(schema, ensure_ascii=False)}",
    ]
    return "\n".join(rules)


def rebase_refs(schema: Any, at: str) -> Any:
    """`schema` with its local `$ref`s ("#/$defs/X", "#") pointing below JSON pointer `at`,
    where it is placed inside a bigger schema (a function's parameters inside a call: pydantic
    and the openai SDK write nested models as `$defs` referenced from the root)."""
    if isinstance(schema, list):
        return [rebase_refs(item, at) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = f"#{at}{value[1:]}"
        elif key in ("const", "enum", "default", "examples"):
            out[key] = value  # data, not schemas
        else:
            out[key] = rebase_refs(value, at)
    return out


def _literal(text: str, tokenizer: Any) -> str:
    """A Lark literal for `text`; a marker the tokenizer holds as one added token (Qwen's
    `<tool_call>`) is referenced by id, since the model writes that token, not its letters."""
    if not text:
        return ""
    core = text.strip("\n")
    token_id = _added_token_id(core, tokenizer) if core else None
    if token_id is None:
        return json.dumps(text)
    at = text.index(core)
    lead, trail = text[:at], text[at + len(core) :]
    parts = (
        json.dumps(lead) if lead else "",
        f"<[{token_id}]>",
        json.dumps(trail) if trail else "",
    )
    return " ".join(p for p in parts if p)


def _added_token_id(text: str, tokenizer: Any) -> int | None:
    added = getattr(tokenizer, "get_added_vocab", None)
    return added().get(text) if added is not None else None
