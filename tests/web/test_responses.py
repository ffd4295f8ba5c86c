"""OpenAI's Responses API with the official openai SDK against a real tiny-model server:
create streamed and not, three turns chained by previous_response_id (the third turn's text
equals a chat completion over the whole conversation, and its prompt reuses the earlier turns'
KV), retrieve, delete, owners, the WebSocket mode, and bad input."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.web.conftest import KEYED_SERVER_KEYS

pytestmark = pytest.mark.timeout(120)

KEY, OTHER_KEY = KEYED_SERVER_KEYS
GREEDY = {"temperature": 0, "max_output_tokens": 12}
NO_EOS = {"ignore_eos": True}


@pytest.fixture
def client(keyed_server):
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def other_client(keyed_server):
    with openai.OpenAI(
        base_url=f"{keyed_server.url}/v1", api_key=OTHER_KEY, max_retries=0
    ) as client:
        yield client


def chat_text(keyed_server, messages: list[dict], max_tokens: int, ignore_eos: bool = True) -> str:
    """The same conversation through /v1/chat/completions, greedy."""
    response = httpx.post(
        f"{keyed_server.url}/v1/chat/completions",
        json={
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": ignore_eos,
        },
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_three_turns_chained_streamed_and_not(client, keyed_server):
    first = client.responses.create(input="Name a color.", extra_body=NO_EOS, **GREEDY)
    assert first.object == "response" and first.status == "incomplete"  # cut by max tokens
    assert first.id.startswith("resp_") and first.output_text
    assert first.usage.output_tokens == GREEDY["max_output_tokens"]

    events = list(
        client.responses.create(
            input=[{"role": "user", "content": [{"type": "input_text", "text": "And a fruit?"}]}],
            previous_response_id=first.id,
            stream=True,
            extra_body=NO_EOS,
            **GREEDY,
        )
    )
    second = events[-1].response
    assert events[-1].type == "response.incomplete" and second.previous_response_id == first.id
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == second.output_text and deltas

    third = client.responses.create(
        input="And an animal?",
        previous_response_id=second.id,
        instructions="Answer briefly.",
        extra_body=NO_EOS,
        **GREEDY,
    )
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And a fruit?"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "And an animal?"},
    ]
    assert third.output_text == chat_text(keyed_server, conversation, 12)
    # Without instructions the second turn's prompt extends the first's: its KV is reused.
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens >= 16
    retrieved = client.responses.retrieve(third.id)
    assert retrieved.output_text == third.output_text and retrieved.status == third.status
    assert retrieved.model_dump() == third.model_dump()


def test_stream_event_sequence(client):
    events = list(
        client.responses.create(input="Hello", stream=True, temperature=0, max_output_tokens=5)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == events[-1].response.output_text


def test_store_retrieve_delete_and_owners(client, other_client):
    kept = client.responses.create(input="Hi", temperature=0, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        other_client.responses.retrieve(kept.id)  # another key's response does not exist
    with pytest.raises(openai.NotFoundError):
        other_client.responses.create(input="Hi", previous_response_id=kept.id)
    unstored = client.responses.create(input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(input="Hi", previous_response_id=kept.id)
    assert missing.value.body["code"] == "previous_response_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"input": [{"type": "function_call_output", "call_id": "x", "output": "y"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input"),
        ({"text": {"format": {"type": "json_object"}}}, "text"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
        ({"model": "gpt-nope"}, "model"),
    ],
)  # fmt: skip
def test_bad_requests_are_4xx_naming_the_field(client, fields, param):
    body = {"input": "Hi", **fields}
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(**body)
    assert refused.value.status_code in (400, 404)
    assert refused.value.body["param"].startswith(param)


def test_websocket_mode_chains_turns_on_one_socket(client, keyed_server):
    pytest.importorskip("websockets", reason="the openai SDK's WebSocket mode needs websockets")
    texts, ids = [], []
    with client.responses.connect() as connection:
        previous = None
        for question in ("Name a color.", "And a fruit?"):
            connection.response.create(
                input=question, previous_response_id=previous, store=False, stream_id=question,
                **GREEDY,
            )  # fmt: skip
            for event in connection:
                assert event.type != "error", event
                assert event.stream_id == question  # the envelope's tag, on every event
                if event.type in ("response.completed", "response.incomplete"):
                    break
            texts.append(event.response.output_text)
            ids.append(previous := event.response.id)
        # Not stored, yet chained on this socket; a bad turn gets an error event, the socket
        # stays usable.
        connection.response.create(input="x", previous_response_id="resp_nope")
        error = next(iter(connection))
        assert error.type == "error" and error.code == "previous_response_not_found"
    conversation = [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": texts[0]},
        {"role": "user", "content": "And a fruit?"},
    ]
    assert texts[1] == chat_text(keyed_server, conversation, 12, ignore_eos=False)


def test_a_dropped_response_stream_resumes_after_its_sequence_number(client, keyed_server):
    body = {"input": "Tell me a story.", "temperature": 0, "max_output_tokens": 300}
    stream = client.responses.create(stream=True, extra_body={"resumable": True, **NO_EOS}, **body)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 8:
            break
    stream.close()  # the connection drops mid-answer
    response_id = seen[0].response.id
    rest = list(
        client.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number)
    )
    assert [e.sequence_number for e in seen + rest] == list(range(len(seen) + len(rest)))
    final = rest[-1].response
    assert rest[-1].type == "response.incomplete" and final.usage.output_tokens == 300
    deltas = [e.delta for e in seen + rest if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text
    assert client.responses.retrieve(response_id).output_text == final.output_text
