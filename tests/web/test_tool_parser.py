"""The tool-call parser against the calls a text was made from, fed whole or cut anywhere
(hypothesis): streamed deltas reassemble (as the openai SDK's stream helpers do) into the same
calls and content as one `feed` of the whole text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triode.engine.tool_calls import HERMES, LLAMA3_JSON, format_call
from triode.web.tool_parser import ToolCallParser

json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(max_size=6), json_value, max_size=4)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
calls_strategy = st.lists(st.tuples(names, arguments), max_size=3)
plain_text = st.text(alphabet=st.characters(blacklist_characters="<{"), max_size=20)


def cut(text: str, points: list[int]) -> list[str]:
    points = sorted({p % (len(text) + 1) for p in points})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


def reassemble(parser: ToolCallParser, pieces: list[str]):
    """What a streaming client ends up with (the SDK's accumulation by index)."""
    content, calls = "", {}
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    for delta in deltas:
        content += delta.content
        for d in delta.tool_calls:
            obj = d.to_object()
            entry = calls.setdefault(obj["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in obj:
                assert entry["id"] is None  # id and name come once
                entry["id"], entry["name"] = obj["id"], obj["function"]["name"]
            entry["arguments"] += obj["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


def hermes_text(before: str, calls, after: str) -> str:
    blocks = [format_call(HERMES, name, args) for name, args in calls]
    return before + ("\n" if before and blocks else "") + "\n".join(blocks) + after


@settings(max_examples=150, deadline=None)
@given(
    before=plain_text,
    calls=calls_strategy,
    points=st.lists(st.integers(0, 400), max_size=12),
)
def test_hermes_calls_stream_and_parse_alike(before, calls, points):
    text = hermes_text(before, calls, "")
    whole = ToolCallParser(HERMES)
    whole.feed(text)
    whole.finish()
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == calls
    if calls:
        assert (whole.content or "").strip() == before.strip()
    else:
        assert whole.content == before
    content, streamed = reassemble(ToolCallParser(HERMES), cut(text, points))
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.name, c.arguments) for c in whole.calls
    ]
    assert content.strip() == (whole.content or "").strip()


@settings(max_examples=100, deadline=None)
@given(calls=calls_strategy.filter(bool), points=st.lists(st.integers(0, 400), max_size=12))
def test_llama3_json_calls_stream_and_parse_alike(calls, points):
    text = "; ".join(format_call(LLAMA3_JSON, name, args) for name, args in calls)
    whole = ToolCallParser(LLAMA3_JSON)
    whole.feed(text)
    whole.finish()
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == calls
    assert whole.content is None
    _, streamed = reassemble(ToolCallParser(LLAMA3_JSON), cut(text, points))
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.name, c.arguments) for c in whole.calls
    ]


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60), points=st.lists(st.integers(0, 100), max_size=8))
def test_text_without_calls_comes_back_unchanged(text, points):
    for fmt in (HERMES, LLAMA3_JSON):
        if fmt is LLAMA3_JSON and text.lstrip().startswith("{"):
            continue
        if fmt is HERMES and "<tool_call>" in text:
            continue
        content, calls = reassemble(ToolCallParser(fmt), cut(text, points))
        assert (content, calls) == (text, [])


def test_arguments_stream_as_the_model_writes_them():
    parser = ToolCallParser(HERMES)
    first = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    assert [d.to_object() for d in first.tool_calls] == [
        {
            "index": 0,
            "id": parser.calls[0].id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"ci'},
        }
    ]
    second = parser.feed('ty": "Par')
    assert [d.to_object() for d in second.tool_calls] == [
        {"index": 0, "function": {"arguments": 'ty": "Par'}}
    ]
    third = parser.feed('is"}}\n</tool_call>')
    assert third.tool_calls[0].arguments == 'is"}'
    assert parser.calls[0].arguments == '{"city": "Paris"}'


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        # Arguments first: not streamable, still a call once the block closes.
        (
            '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>',
            None,
            [("f", {"a": 1})],
        ),
        # Broken JSON inside the tags: given back as text.
        ("<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", []),
        # Unterminated but complete JSON (the stream ended): a call.
        ('<tool_call>\n{"name": "f", "arguments": {}}', None, [("f", {})]),
        # A marker-like text that is not one.
        ("a <tool_c b", "a <tool_c b", []),
    ],
)
def test_odd_hermes_outputs(text, content, calls):
    parser = ToolCallParser(HERMES)
    parser.feed(text)
    parser.finish()
    assert parser.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == calls


def test_parallel_tool_calls_false_keeps_the_first_call():
    text = hermes_text("", [("f", {"x": 1}), ("g", {"y": 2})], "")
    parser = ToolCallParser(HERMES, max_calls=1)
    parser.feed(text)
    parser.finish()
    assert [(c.name, c.arguments) for c in parser.calls] == [("f", '{"x": 1}')]


def test_llama3_plain_answer_is_content():
    parser = ToolCallParser(LLAMA3_JSON)
    parser.feed("The answer is {maybe} 4.")
    parser.finish()
    assert (parser.content, parser.calls) == ("The answer is {maybe} 4.", [])
