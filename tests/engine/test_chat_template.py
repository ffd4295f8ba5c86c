"""Chat rendering with tools (written in for SmolLM2's plain template, passed through for a
tools-aware one), chat_template_kwargs, and the tool-call grammars, on the real tokenizer."""

from __future__ import annotations

import copy
import json

import pytest

from triode.engine.chat_template import render_chat
from triode.engine.errors import InvalidRequestError
from triode.engine.sampling.structured_outputs import StructuredOutputsParams as Spec
from triode.engine.structured.compiler import GrammarCompiler
from triode.engine.tool_calls import (
    HERMES,
    LLAMA3_JSON,
    detect_tool_call_format,
    format_call,
    tool_call_grammar,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
]
# A minimal tools-aware template (the shape Qwen's and Hermes' take).
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
    "{{ c.function.arguments.city }}{% endfor %}\n{% endfor %}"
    "{% if flavour %}FLAVOUR={{ flavour }}{% endif %}"
)


def test_plain_template_gets_tools_calls_and_results_written_in(tokenizer):
    text = render_chat(tokenizer, HISTORY, tools=[WEATHER, TIME])
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n")
    assert json.dumps(WEATHER) in system and json.dumps(TIME) in system
    assert "<tool_call>" in system  # how to call
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_an_existing_system_message_keeps_its_text(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *HISTORY[:1]]
    text = render_chat(tokenizer, messages, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou may call")
    assert "SmolLM" not in text  # the template's default system prompt is not added as well


def test_no_tools_renders_exactly_as_the_template_does(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(tokenizer, messages) == expected


@pytest.fixture()
def tools_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOLS_TEMPLATE
    return tok


def test_a_tools_aware_template_gets_tools_and_argument_objects(tools_tokenizer):
    text = render_chat(
        tools_tokenizer, HISTORY, tools=[WEATHER, TIME], chat_template_kwargs={"flavour": "mint"}
    )
    assert text.startswith("TOOLS:get_weather;get_time;")
    assert "[assistant]CALL get_weather Paris" in text  # arguments parsed to an object
    assert "[tool]18 C, sunny" in text
    assert text.endswith("FLAVOUR=mint")


def test_reserved_chat_template_kwargs_are_refused(tokenizer):
    with pytest.raises(InvalidRequestError) as info:
        render_chat(tokenizer, HISTORY[:1], chat_template_kwargs={"tools": []})
    assert info.value.param == "chat_template_kwargs"


def test_tool_call_format_by_template(tokenizer):
    assert detect_tool_call_format(tokenizer) is HERMES

    class Llama3:
        chat_template = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"

    assert detect_tool_call_format(Llama3()) is LLAMA3_JSON


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, 49152, [2])


def accepts(compiler, tokenizer, grammar: str, text: str) -> bool:
    matcher = compiler.compile(Spec(grammar=grammar)).deep_copy()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3_JSON])
def test_tool_call_grammars_accept_exactly_valid_calls(compiler, tokenizer, fmt):
    paris = format_call(fmt, "get_weather", {"city": "Paris"})
    utc = format_call(fmt, "get_time", {"zone": "UTC"})
    named = tool_call_grammar(fmt, [WEATHER, TIME], tokenizer, only="get_weather")
    assert accepts(compiler, tokenizer, named, paris)
    assert not accepts(compiler, tokenizer, named, utc)  # another function
    assert not accepts(compiler, tokenizer, named, format_call(fmt, "get_weather", {}))
    assert not accepts(
        compiler, tokenizer, named, format_call(fmt, "get_weather", {"city": "X", "unit": "K"})
    )
    assert not accepts(compiler, tokenizer, named, paris + fmt.separator + paris)

    required = tool_call_grammar(fmt, [WEATHER, TIME], tokenizer)
    assert accepts(compiler, tokenizer, required, utc)
    assert accepts(compiler, tokenizer, required, paris + fmt.separator + utc)
    assert not accepts(compiler, tokenizer, required, "Sure! " + paris)
    single = tool_call_grammar(fmt, [WEATHER, TIME], tokenizer, parallel=False)
    assert accepts(compiler, tokenizer, single, utc)
    assert not accepts(compiler, tokenizer, single, paris + fmt.separator + utc)


def test_tool_parameters_with_defs_and_refs_compile_and_constrain(compiler, tokenizer):
    # pydantic (and the openai SDK's pydantic_function_tool) write nested models as $defs
    # referenced from the parameters' root; inside a call they must still resolve.
    point = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    route = {
        "type": "function",
        "function": {
            "name": "route",
            "parameters": {
                "$defs": {"Point": point},
                "type": "object",
                "properties": {"start": {"$ref": "#/$defs/Point"}},
                "required": ["start"],
            },
        },
    }
    for fmt in (HERMES, LLAMA3_JSON):
        for grammar in (
            tool_call_grammar(fmt, [route], tokenizer),
            tool_call_grammar(fmt, [WEATHER, route], tokenizer),
        ):
            assert accepts(
                compiler, tokenizer, grammar, format_call(fmt, "route", {"start": {"x": 3}})
            )
            assert not accepts(
                compiler, tokenizer, grammar, format_call(fmt, "route", {"start": {"x": "3"}})
            )
