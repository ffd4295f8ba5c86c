"""The official `openai` package against the real SmolLM2 server, and chunk timing.

Greedy decoding makes streamed and non-streamed text comparable token for token.
"""

from __future__ import annotations

import itertools
import statistics
import time

import httpx
import openai
import pytest

from tests.web.helpers import stream_sse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(smol_server):
    with openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_health_is_503_while_the_model_loads(smol_thread, client):
    # Polled from the moment the socket was bound until the engine was ready.
    statuses = [status for status, _ in smol_thread.health_while_starting]
    assert 503 in statuses, statuses
    loading = next(body for status, body in smol_thread.health_while_starting if status == 503)
    assert loading["error"]["code"] == "engine_not_ready"
    assert statuses == sorted(statuses, reverse=True)  # 503s, then (maybe) 200s
    assert client.models.list().data  # and serving now


def test_the_default_serves_the_bundled_file_as_it_is_quantized(smol_server):
    """No --quantization: the bundled GGUF's own Q4_1 blocks, and /v1/models says so."""
    (entry,) = httpx.get(f"{smol_server.url}/v1/models", timeout=30).json()["data"]
    weights = entry["weights"]
    assert weights["quantization"] == "gguf" and weights["dtype"] == "float32", weights
    assert weights["source_types"].get("Q4_1", 0) > 100, weights
    assert 60e6 < weights["weight_bytes"] < 120e6, weights  # float32 would be ~540 MB
    assert weights["formats"].get("int4 g32 +offset", 0) > 100, weights


def test_chat_stream_equals_non_stream_and_usage_comes_last(client, model):
    whole = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=40
    )
    text = whole.choices[0].message.content
    assert "Paris" in text
    assert whole.choices[0].finish_reason in ("stop", "length")

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_equals_non_stream(client, model):
    args = {
        "model": model,
        "prompt": "The three primary colors are",
        "temperature": 0,
        "max_tokens": 24,
    }
    whole = client.completions.create(**args)
    chunks = list(
        client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_multibyte_text_streams_without_garbling(client, model):
    # Japanese script: characters whose UTF-8 bytes span several byte-level tokens.
    messages = [
        {"role": "user", "content": "Write the Japanese word for 'thank you' in Japanese script."}
    ]
    args = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 30}
    whole = client.chat.completions.create(**args).choices[0].message.content
    assert any(ord(ch) > 0x3000 for ch in whole)
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**args, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == whole
    assert not any("\ufffd" in piece for piece in pieces)


def test_stop_string_never_leaks_into_the_stream(client, model):
    args = {
        "model": model,
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 40,
        "stop": ["Paris"],
    }
    whole = client.chat.completions.create(**args).choices[0]
    assert whole.finish_reason == "stop" and "Paris" not in whole.message.content
    chunks = list(client.chat.completions.create(**args, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole.message.content
    assert not any(
        p == "" and c.choices[0].finish_reason is None for p, c in zip(pieces[1:], chunks[1:])
    )


def test_n_choices_and_seed_through_the_sdk(client, model):
    args = {
        "model": model,
        "messages": QUESTION,
        "max_tokens": 8,
        "n": 2,
        "seed": 7,
        "temperature": 1.0,
    }
    whole = client.chat.completions.create(**args)
    assert [c.index for c in whole.choices] == [0, 1]
    again = client.chat.completions.create(**args)
    assert [c.message.content for c in again.choices] == [c.message.content for c in whole.choices]
    stream = client.chat.completions.create(**args, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]


def test_sdk_errors(client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=model, prompt="hi", max_tokens=10_000)
    assert bad.value.code == "context_length_exceeded"
    assert "8192" in bad.value.message


async def test_chunks_arrive_one_by_one_as_generated(smol_server):
    body = {"prompt": "Count slowly:", "max_tokens": 24, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=smol_server.url, timeout=60) as client:
        start = time.monotonic()
        result = await stream_sse(client, "/v1/completions", body)
    assert result.is_done
    token_chunks = [
        (t, c)
        for t, c in zip(result.times, result.events)
        if c != "[DONE]" and c["choices"][0]["text"]
    ]
    times = [t for t, _ in token_chunks]
    total = time.monotonic() - start
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(
        f"{len(times)} chunks over {times[-1] - times[0]:.3f} s (request {total:.3f} s); "
        f"first after {times[0] - start:.3f} s; median gap {statistics.median(gaps) * 1000:.1f} ms"
    )
    # One chunk per token, spread over the generation instead of one burst at the end.
    assert len(times) >= 20
    assert times[0] - start < total / 2
    assert statistics.median(gaps) > 0.002
    assert times[-1] - times[0] > 0.3 * (total - (times[0] - start))
