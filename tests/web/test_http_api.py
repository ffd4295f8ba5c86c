"""The HTTP API's shapes against a real tiny-model server: responses, chunks, and admin routes."""

from __future__ import annotations

import httpx
import pytest

from tests.web.helpers import CHAT, stream_sse

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def client(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=30) as client:
        yield client


async def test_models_health_and_metrics(client):
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 1024
    weights = models["data"][0]["weights"]  # what is served: a float32 tiny model here
    assert weights["quantization"] == "none" and weights["dtype"] == "float32"
    assert weights["weight_bytes"] > 0 and weights["formats"] == {
        "float32": weights["formats"]["float32"]
    }

    health = await client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}

    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("num_requests_running", "kv_cache_usage_perc", "time_to_first_token_seconds"):
        assert f"triode:{name}" in metrics.text


async def test_one_model_and_the_version(client):
    import triode

    card = (await client.get("/v1/models/tiny")).json()
    assert card == (await client.get("/v1/models")).json()["data"][0]
    missing = await client.get("/v1/models/gpt-9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    version = await client.get("/version")
    assert version.status_code == 200 and version.json() == {"version": triode.__version__}


async def test_completion_object(client):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 5, "ignore_eos": True, "seed": 1}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200
    out = response.json()
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    assert out["model"] == "tiny" and isinstance(out["created"], int)
    [choice] = out["choices"]
    assert (
        choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    )
    usage = out["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_chat_object_and_stream_chunks(client):
    body = {"messages": CHAT, "max_tokens": 6, "ignore_eos": True, "temperature": 0}
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert whole["object"] == "chat.completion"
    message = whole["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]

    streamed = await stream_sse(
        client,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert streamed.status == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.is_done
    chunks = streamed.chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])
    assert streamed.text() == message["content"]


async def test_n_choices_and_prompt_lists(client):
    body = {"prompt": ["One", "Two"], "n": 2, "max_tokens": 3, "ignore_eos": True, "seed": 3}
    out = (await client.post("/v1/completions", json=body)).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert out["usage"]["completion_tokens"] == 12

    streamed = await stream_sse(client, "/v1/completions", {**body, "stream": True})
    seen = {choice["index"] for c in streamed.chunks for choice in c["choices"]}
    assert seen == {0, 1, 2, 3}
    finished = [ch for c in streamed.chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(ch["index"] for ch in finished) == [0, 1, 2, 3]
    for i in range(4):  # seeded: streaming and not agree per choice
        assert streamed.text(i) == out["choices"][i]["text"]


async def test_token_id_prompt_echo_and_stop(client):
    tokens = (await client.post("/tokenize", json={"prompt": "The fox"})).json()["tokens"]
    body = {"prompt": tokens, "max_tokens": 4, "echo": True, "ignore_eos": True}
    out = (await client.post("/v1/completions", json=body)).json()
    assert out["choices"][0]["text"].startswith("The fox")

    free = (
        await client.post(
            "/v1/completions", json={"prompt": "a", "max_tokens": 8, "temperature": 0}
        )
    ).json()
    text = free["choices"][0]["text"]
    stop = text[2:4] if len(text) >= 4 else None
    if stop and stop.strip():
        stopped = await client.post(
            "/v1/completions", json={"prompt": "a", "max_tokens": 8, "temperature": 0, "stop": stop}
        )
        choice = stopped.json()["choices"][0]
        assert stop not in choice["text"] and choice["finish_reason"] == "stop"
        assert choice["stop_reason"] == stop


async def test_logprobs_shapes(client):
    body = {"prompt": "Hi", "max_tokens": 3, "logprobs": 2, "ignore_eos": True}
    lp = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 3
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0

    chat = {
        "messages": CHAT,
        "max_tokens": 3,
        "logprobs": True,
        "top_logprobs": 2,
        "ignore_eos": True,
    }
    content = (await client.post("/v1/chat/completions", json=chat)).json()["choices"][0][
        "logprobs"
    ]["content"]
    assert len(content) == 3
    assert set(content[0]) == {"token", "logprob", "bytes", "top_logprobs"}
    assert len(content[0]["top_logprobs"]) == 2


async def test_continue_final_message_leaves_the_reply_open(client):
    """The Continue of a reply cut at the token limit: the prompt ends inside the reply."""
    chat = [*CHAT, {"role": "assistant", "content": "Once upon a time"}]
    closed = (await client.post("/tokenize", json={
        "messages": chat, "add_generation_prompt": False})).json()["tokens"]  # fmt: skip
    body = {"messages": chat, "add_generation_prompt": False, "continue_final_message": True}
    open_ = (await client.post("/tokenize", json=body)).json()["tokens"]
    # The same tokens up to the reply's last word, without the end-of-turn tokens after it.
    assert len(open_) < len(closed) and closed[: len(open_)] == open_
    assert (
        (await client.post("/detokenize", json={"tokens": open_}))
        .json()["prompt"]
        .endswith("Once upon a time")
    )
    out = (
        await client.post(
            "/v1/chat/completions", json={**body, "max_tokens": 2, "ignore_eos": True}
        )
    ).json()
    assert out["usage"]["prompt_tokens"] == len(open_)


async def test_tokenize_detokenize_round_trip(client):
    out = (await client.post("/tokenize", json={"prompt": "Hello world"})).json()
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 1024
    back = (await client.post("/detokenize", json={"tokens": out["tokens"]})).json()
    assert back == {"prompt": "Hello world"}
    chat = (await client.post("/tokenize", json={"messages": CHAT})).json()
    assert chat["count"] > out["count"]
