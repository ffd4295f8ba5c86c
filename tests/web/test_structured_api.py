"""Structured output and tool calling through the official `openai` package against the real
SmolLM2 server (the module-wide server of test_openai_client): JSON schemas, JSON mode, vLLM's
guided_* fields, the SDK's `parse` and stream helpers, a tool-call round trip, logit_bias, and
refusals that name their field and touch nothing else."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pydantic
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.web.structured_schemas import SCHEMAS

# NOTE: the timeout is a hang guard for a busy machine; on 2 idle cores the module takes ~40 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(smol_server):
    with openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def schema_format(schema: dict) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_twenty_json_schemas_validate_streamed_and_not(client, model):
    def ask(case: tuple[str, dict], stream: bool) -> tuple[str, str | None]:
        question, schema = case
        options = {
            "model": model,
            "messages": user(question),
            "response_format": schema_format(schema),
            "max_tokens": 100,
            "temperature": 0,
        }
        if not stream:
            choice = client.chat.completions.create(**options).choices[0]
            return choice.message.content, choice.finish_reason
        text, reason = "", None
        for chunk in client.chat.completions.create(**options, stream=True):
            for c in chunk.choices:
                text += c.delta.content or ""
                reason = c.finish_reason or reason
        return text, reason

    jobs = [(case, stream) for case in SCHEMAS for stream in (False, True)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    num_stopped = 0
    for (case, _), (text, reason) in zip(jobs, answers):
        if reason == "stop":
            num_stopped += 1
            jsonschema.validate(json.loads(text), case[1])
    assert num_stopped >= len(jobs) - 4, answers  # a few may run out of tokens, not more


def test_json_mode_choice_and_regex_always_match(client, model):
    def ask(body: dict) -> list:
        return client.chat.completions.create(
            model=model, n=3, temperature=1.0, seed=11, max_tokens=60, **body
        ).choices

    objects = ask(
        {"messages": user("Tell me about owls."), "response_format": {"type": "json_object"}}
    )
    choices = ask(
        {"messages": user("Is the sea salty?"), "extra_body": {"guided_choice": ["yes", "no"]}}
    )
    dates = ask(
        {
            "messages": user("When was the Eiffel tower built?"),
            "extra_body": {"guided_regex": r"(1[0-9]|20)\d\d-(0[1-9]|1[0-2])-[0-3]\d"},
        }
    )
    stopped_objects = [c for c in objects if c.finish_reason == "stop"]
    assert stopped_objects
    for c in stopped_objects:
        assert isinstance(json.loads(c.message.content), dict)
    assert all(c.finish_reason == "stop" and c.message.content in ("yes", "no") for c in choices)
    for c in dates:
        assert c.finish_reason == "stop"
        assert re.fullmatch(r"(1[0-9]|20)\d\d-(0[1-9]|1[0-2])-[0-3]\d", c.message.content)


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    species: str = pydantic.Field(pattern=r"^(cat|dog|fish)$")
    legs: int = pydantic.Field(ge=0, le=4)


def test_sdk_parse_and_its_stream_helper_give_a_model_instance(client, model):
    options = {
        "model": model,
        "messages": user("Describe my pet as JSON."),
        "response_format": Pet,
        "max_tokens": 60,
        "temperature": 0,
    }
    parsed = client.beta.chat.completions.parse(**options).choices[0].message.parsed
    assert isinstance(parsed, Pet)
    with client.beta.chat.completions.stream(**options) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion().choices[0].message.parsed
    assert streamed == parsed  # greedy: the same object, streamed or not


def test_named_tool_round_trip_and_streamed_calls_reassemble(client, model):
    options = {
        "model": model,
        "messages": WEATHER_QUESTION,
        "tools": [TIME, WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 60,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**options).choices[0]
    assert whole.finish_reason == "tool_calls"
    (call,) = whole.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    # The SDK's stream helper accumulates the delta.tool_calls chunks (index, id, name, then
    # argument fragments) into a message: it must equal the non-streamed one.
    with client.beta.chat.completions.stream(**options) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion().choices[0]
    assert "tool_calls.function.arguments.delta" in events
    assert final.finish_reason == "tool_calls"
    (streamed,) = final.message.tool_calls
    assert (streamed.function.name, streamed.function.arguments) == (
        call.function.name,
        call.function.arguments,
    )

    history = [
        *WEATHER_QUESTION,
        whole.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(
        model=model, messages=history, tools=[TIME, WEATHER], max_tokens=40, temperature=0
    ).choices[0]
    assert answer.message.content and not answer.message.tool_calls
    assert answer.finish_reason in ("stop", "length")


def test_required_calls_validate_and_none_shows_no_tools(client, model):
    required = client.chat.completions.create(
        model=model,
        messages=user("What time is it in Tokyo, and the weather in Oslo?"),
        tools=[TIME, WEATHER],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    ).choices[0]
    assert required.finish_reason == "tool_calls" and required.message.content is None
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (TIME, WEATHER)}
    for call in required.message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])

    plain = client.chat.completions.create(
        model=model,
        messages=WEATHER_QUESTION,
        tools=[TIME, WEATHER],
        tool_choice="none",
        max_tokens=20,
        temperature=0,
    ).choices[0]
    assert plain.message.tool_calls is None and plain.message.content
    no_tools = client.chat.completions.create(
        model=model, messages=WEATHER_QUESTION, max_tokens=20, temperature=0
    ).choices[0]
    assert plain.message.content == no_tools.message.content  # "none": the tools are not shown


def test_logit_bias_bans_and_forces_tokens(client, model):
    base = {"model": model, "messages": user("What is the capital of France?"), "temperature": 0}
    first = client.chat.completions.create(**base, max_tokens=8, logprobs=True)
    banned = first.choices[0].logprobs.content[0].token
    tokenize = httpx.post(
        f"{client.base_url}".replace("/v1/", "/tokenize"),
        json={"model": model, "prompt": banned, "add_special_tokens": False},
    ).json()
    (banned_id,) = tokenize["tokens"]
    minus = client.chat.completions.create(
        **base, max_tokens=8, logprobs=True, logit_bias={str(banned_id): -100}
    )
    assert banned not in [t.token for t in minus.choices[0].logprobs.content]
    forced = client.chat.completions.create(**base, max_tokens=5, logit_bias={"1000": 100})
    assert forced.usage.completion_tokens == 5
    completion = client.completions.create(
        model=model, prompt="Hello", max_tokens=5, temperature=0, logit_bias={"1000": 100}
    )
    forced_text = httpx.post(
        f"{client.base_url}".replace("/v1/", "/detokenize"),
        json={"model": model, "tokens": [1000] * 5},
    ).json()["prompt"]
    assert completion.choices[0].text == forced_text == forced.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"response_format": schema_format({"type": "nope"})}, "response_format", "nope"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "schema"),
        ({"extra_body": {"guided_regex": "(["}}, "guided_regex", ""),
        ({"extra_body": {"guided_grammar": "start: foo"}}, "guided_grammar", "foo"),
        ({"extra_body": {"guided_json": "{not json"}}, "guided_json", "JSON"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice", "choice"),
        (
            {"extra_body": {"guided_regex": "a", "guided_choice": ["a"]}},
            "guided_choice",
            "one structured-output constraint",
        ),
        ({"extra_body": {"structured_outputs": {"jsn": {}}}}, "structured_outputs", "jsn"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "x",
        ),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
            "",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"logit_bias": {"49152": 5}}, "logit_bias", "49152"),
        ({"logit_bias": {"5": 101}}, "logit_bias", ""),
        ({"extra_body": {"allowed_token_ids": [-1]}}, "allowed_token_ids", ""),
    ],
)
def test_bad_constraints_are_400_naming_the_field(client, model, body, param, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=user("Hi"), max_tokens=4, **body)
    error = info.value.body
    assert info.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert fragment in error["message"]


async def test_websocket_streams_tool_calls_beside_a_refused_constraint(smol_server):
    named = {
        "messages": WEATHER_QUESTION,
        "tools": [TIME, WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 60,
        "temperature": 0,
    }
    bad = {"messages": WEATHER_QUESTION, "guided_regex": "([", "max_tokens": 5}
    async with open_websocket_url(smol_server.ws_url) as ws:
        for gen_id, request in (("call", named), ("bad", bad)):
            message = {"type": "chat.completion", "id": gen_id, "request": request}
            await ws.send_message(json.dumps(message))
        messages, open_ids = [], {"call", "bad"}
        while open_ids:
            with trio.fail_after(120):
                message = json.loads(await ws.get_message())
            messages.append(message)
            if message["type"] in ("done", "error"):
                open_ids.discard(message["id"])
    (refusal,) = [m for m in messages if m["id"] == "bad"]
    assert refusal["type"] == "error" and refusal["error"]["param"] == "guided_regex"
    deltas = [c["delta"] for m in messages if m["type"] == "chunk" for c in m["chunk"]["choices"]]
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in t and t["index"] == 0 for t in calls[1:])
    arguments = "".join(t["function"]["arguments"] for t in calls)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert not any(d.get("content") for d in deltas)
    finals = [
        c["finish_reason"]
        for m in messages
        if m["type"] == "chunk"
        for c in m["chunk"]["choices"]
        if c["finish_reason"]
    ]
    assert finals == ["tool_calls"]
