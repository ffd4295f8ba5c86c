"""Chat messages (OpenAI's shape) -> prompt text, through the model's chat template.

Tools: a template that knows about tools (it mentions `tools`, as Qwen's, Hermes' and
Llama 3.1's do) gets them through transformers' `apply_chat_template(tools=...)`, with earlier
calls' arguments as objects, as those templates expect. A template that does not (SmolLM2's
is plain ChatML) would silently drop them, so triode writes them in itself, in the model's
tool-call format: the tool list and how to call goes into the system message, earlier calls
into the assistant's text, and tool results into user turns wrapped in
<tool_response></tool_response> (Hermes' convention).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from triode.engine.errors import InvalidRequestError
from triode.engine.tool_calls import ToolCallFormat, detect_tool_call_format, format_call

# apply_chat_template's own arguments: chat_template_kwargs may not replace them.
_RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "tokenize",
        "add_generation_prompt",
        "return_dict",
        "return_tensors",
        "chat_template",
        "continue_final_message",
    }
)


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in (template if isinstance(template, str) else json.dumps(template))


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool = True,
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_format: ToolCallFormat | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    continue_final_message: bool = False,
) -> str:
    """The conversation as text, through the tokenizer's chat template (which adds the
    special tokens itself). Raises InvalidRequestError (param "messages" or
    "chat_template_kwargs") when it cannot."""
    kwargs = dict(chat_template_kwargs or {})
    clash = sorted(_RESERVED_KWARGS & kwargs.keys())
    if clash:
        raise InvalidRequestError(
            f"chat_template_kwargs: may not set {', '.join(clash)} (use the request's own fields)",
            "chat_template_kwargs",
        )
    conversation: list[dict[str, Any]] = list(messages)
    has_tool_turns = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if template_supports_tools(tokenizer):
        if has_tool_turns:
            conversation = [_native_message(m) for m in messages]
        if tools:
            kwargs["tools"] = tools
    elif tools or has_tool_turns:
        fmt = tool_format or detect_tool_call_format(tokenizer)
        conversation = _with_tools_written_in(messages, tools or [], fmt)
    try:
        return tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **kwargs,
        )
    except Exception as exc:  # jinja raises for conversations the template refuses
        raise InvalidRequestError(
            f"the chat template rejected the messages: {exc}", "messages"
        ) from None


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message for a tools-aware template: content never None, arguments as objects."""
    out = dict(message)
    out["content"] = out.get("content") or ""
    if out.get("tool_calls"):
        calls = []
        for call in out["tool_calls"]:
            call = dict(call)
            function = dict(call.get("function", {}))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                with contextlib.suppress(ValueError):  # else the template gets the text
                    function["arguments"] = json.loads(arguments)
            call["function"] = function
            calls.append(call)
        out["tool_calls"] = calls
    return out


def _with_tools_written_in(
    messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]], fmt: ToolCallFormat
) -> list[dict[str, Any]]:
    """The conversation as plain role/content turns, tools and calls written as text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        content = message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                format_call(fmt, c["function"]["name"], c["function"].get("arguments", {}))
                for c in message["tool_calls"]
            ]
            content = "\n".join(([content] if content else []) + calls)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        turn = {"role": role, "content": content}
        if message.get("name") and role != "tool":
            turn["name"] = message["name"]
        out.append(turn)
    if tools:
        instructions = tool_instructions(tools, fmt)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instructions}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def tool_instructions(tools: list[dict[str, Any]], fmt: ToolCallFormat) -> str:
    """The system-prompt text that tells a model without a tools template what it may call."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    example = format_call(fmt, "<function name>", {"<argument>": "<value>"})
    if fmt.start:
        how = (
            "To call a function, reply with its name and arguments as JSON between the tags, "
            f"one block per call:\n{example}"
        )
    else:
        how = (
            "To call a function, reply with nothing but a JSON object like "
            f'{example}; separate several calls with "{fmt.separator.strip()}".'
        )
    return (
        "You may call the functions below to help with the user's request. They are listed "
        f"as JSON inside <tools></tools>:\n<tools>\n{listing}\n</tools>\n\n{how}"
    )
