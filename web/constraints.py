"""From request fields to what constrains the output: the engine's StructuredOutputsParams
(from response_format, vLLM's guided_* or structured_outputs, or a tool_choice that forces a
call) and the tool-call plan (which tools the prompt shows, how calls are written and parsed).

Runs in an input-processor worker thread (it checks JSON schemas). Every refusal names the
request field it is about.

`tool_choice`: "none" (the default without tools) neither shows the tools to the model nor
parses calls; "auto" (the default with tools) shows them and parses whatever calls the model
writes; "required" and a named function also force, with a grammar, output that is exactly one
or more valid calls (one for a named function, or with parallel_tool_calls false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from triode.engine import (
    TOOL_CALL_FORMATS,
    InvalidRequestError,
    StructuredOutputsParams,
    ToolCallFormat,
    check_json_schema,
    detect_tool_call_format,
    tool_call_grammar,
)
from triode.web.errors import bad_request
from triode.web.protocol import ChatCompletionRequest, CompletionRequest
from triode.web.protocol_structured import NamedToolChoice

_CONSTRAINT_KEYS = ("json", "regex", "choice", "grammar", "json_object")
# vLLM's structured_outputs options that change nothing here (one grammar engine, our own
# whitespace rule, objects closed by default).
_IGNORED_KEYS = (
    "disable_fallback",
    "disable_any_whitespace",
    "disable_additional_properties",
    "whitespace_pattern",
)


@dataclass(slots=True)
class ToolPlan:
    tools: list[dict[str, Any]]  # OpenAI's tool objects, for the chat template
    fmt: ToolCallFormat
    max_calls: int | None  # 1 for a named function or parallel_tool_calls=false


@dataclass(slots=True)
class Constraint:
    spec: StructuredOutputsParams
    param: str  # the request field it came from


def output_constraint(request: CompletionRequest | ChatCompletionRequest) -> Constraint | None:
    """The one constraint the request's structured-output fields ask for (400 if several)."""
    found: list[Constraint] = []
    rf = request.response_format
    if rf is not None and rf.type == "json_object":
        found.append(Constraint(StructuredOutputsParams(json_object=True), "response_format"))
    elif rf is not None and rf.type == "json_schema":
        js = rf.json_schema
        assert js is not None and js.schema_ is not None  # checked by the schema model
        spec = _spec("response_format", json=js.schema_, strict=bool(js.strict))
        found.append(Constraint(spec, "response_format"))
    if request.guided_json is not None:
        found.append(Constraint(_spec("guided_json", json=request.guided_json), "guided_json"))
    if request.guided_regex is not None:
        found.append(Constraint(_spec("guided_regex", regex=request.guided_regex), "guided_regex"))
    if request.guided_choice is not None:
        spec = _spec("guided_choice", choice=request.guided_choice)
        found.append(Constraint(spec, "guided_choice"))
    if request.guided_grammar is not None:
        spec = _spec("guided_grammar", grammar=request.guided_grammar)
        found.append(Constraint(spec, "guided_grammar"))
    if request.structured_outputs is not None:
        found.append(_from_structured_outputs(request.structured_outputs))
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise bad_request(
            f"{found[1].param}: give one structured-output constraint, not several ({names})",
            found[1].param,
        )
    return found[0] if found else None


def _spec(param: str, **fields: Any) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**fields)
    except InvalidRequestError as exc:
        message = str(exc)
        for kind in _CONSTRAINT_KEYS:
            message = message.replace(f"structured_outputs.{kind}", param)
        raise bad_request(message.replace("structured_outputs", param), param) from None


def _from_structured_outputs(value: dict[str, Any]) -> Constraint:
    param = "structured_outputs"
    unknown = set(value) - set(_CONSTRAINT_KEYS) - set(_IGNORED_KEYS)
    if unknown:
        raise bad_request(
            f"{param}: unsupported key(s) {', '.join(sorted(unknown))}; give one of "
            f"{', '.join(_CONSTRAINT_KEYS)}",
            param,
        )
    fields = {k: v for k, v in value.items() if k in _CONSTRAINT_KEYS and v not in (None, False)}
    try:
        return Constraint(StructuredOutputsParams(**fields), param)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), param) from None
    except TypeError as exc:  # a value of the wrong shape
        raise bad_request(f"{param}: {exc}", param) from None


def tool_plan(
    request: ChatCompletionRequest, tokenizer: Any, parser: str = "auto"
) -> tuple[ToolPlan | None, Constraint | None]:
    """The tools to render and parse, and the grammar forcing a call (required / named)."""
    tools = request.tools or []
    choice = (
        request.tool_choice if request.tool_choice is not None else ("auto" if tools else "none")
    )
    if choice == "none":
        return None, None
    if not tools:
        raise bad_request("tool_choice: needs tools to choose from", "tool_choice")
    tool_dicts = [t.model_dump(by_alias=True, exclude_none=True) for t in tools]
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tools: function names must be unique", "tools")
    for i, tool in enumerate(tools):
        if tool.function.parameters is not None:
            param = f"tools[{i}].function.parameters"
            try:
                check_json_schema(tool.function.parameters, param)
            except InvalidRequestError as exc:
                raise bad_request(str(exc), param) from None
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if named is not None and named not in names:
        raise bad_request(
            f"tool_choice: no tool named {named!r} was given (tools: {', '.join(names)})",
            "tool_choice",
        )
    fmt = TOOL_CALL_FORMATS.get(parser) or detect_tool_call_format(tokenizer)
    single = named is not None or not request.parallel_tool_calls
    plan = ToolPlan(tool_dicts, fmt, 1 if single else None)
    if choice == "auto":
        return plan, None
    grammar = tool_call_grammar(fmt, tool_dicts, tokenizer, only=named, parallel=not single)
    return plan, Constraint(StructuredOutputsParams(grammar=grammar), "tools")
