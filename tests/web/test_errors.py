"""Every kind of bad input gets its status and OpenAI's error shape; never a 422 or a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.web.helpers import CHAT

pytestmark = pytest.mark.timeout(60)

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
async def client(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=30) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    return body["error"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": 3}]},
            "messages.0.content",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": -0.5}, "temperature"),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"messages": CHAT, "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"messages": CHAT, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": "9"}, "max_tokens"),
        ("/v1/chat/completions", {"messages": CHAT, "stop": 5}, "stop"),
        ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "top_logprobs": 50, "logprobs": True},
            "top_logprobs",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, "stream"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "tools": [{"type": "function"}]},
            "tools.0.function",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "min_tokens": 5, "max_tokens": 2},
            "min_tokens",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "presence_penalty": 3}, "presence_penalty"),
        ("/v1/chat/completions", {"messages": CHAT, "priority": 1.5}, "priority"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "continue_final_message": True, "add_generation_prompt": False},
            "continue_final_message",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [*CHAT, {"role": "assistant", "content": "Once"}],
                "continue_final_message": True,
            },
            "continue_final_message",
        ),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [1, "a"]}, "prompt"),
        ("/v1/completions", {"prompt": [1, -4]}, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [10**6]}, "stop_token_ids"),
        ("/v1/completions", {"prompt": "x", "seed": -1}, "seed"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"1": 500}}, "logit_bias"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"a": 5}}, "logit_bias"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(client, path, body, param):
    error = error_of(await client.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error["message"]


async def test_empty_prompt_string_is_400(client):
    # "" tokenizes to nothing: the engine refuses it before anything is queued.
    error = error_of(await client.post("/v1/completions", json={"prompt": ""}), 400)
    assert "at least one token" in error["message"]


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_malformed_json_is_400(client, raw):
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    error = error_of(response, 400)
    assert "JSON" in error["message"]


async def test_unknown_model_is_404(client):
    response = await client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": CHAT})
    error = error_of(response, 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]


async def test_context_overflow_is_400_stating_the_numbers(client):
    body = {"prompt": [5] * 1000, "max_tokens": 100}
    error = error_of(await client.post("/v1/completions", json=body), 400)
    assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
    for number in ("1024", "1100", "1000", "100"):
        assert number in error["message"]

    long_prompt = {"prompt": [5] * 1024}
    error = error_of(await client.post("/v1/completions", json=long_prompt), 400)
    assert error["param"] == "prompt" and "1024" in error["message"]


async def test_streaming_requests_fail_before_the_stream_with_a_status(client):
    body = {"prompt": [5] * 1000, "max_tokens": 100, "stream": True}
    response = await client.post("/v1/completions", json=body)
    assert error_of(response, 400)["code"] == "context_length_exceeded"


async def test_unknown_routes_and_methods_use_the_error_shape(client):
    assert error_of(await client.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
    assert error_of(await client.get("/v1/completions"), 405)["type"] == "invalid_request_error"


async def test_detokenize_out_of_range_and_tokenize_without_input(client):
    error_of(await client.post("/detokenize", json={"tokens": [10**9]}), 400)
    error_of(await client.post("/tokenize", json={}), 400)
    error_of(await client.post("/tokenize", json={"prompt": "a", "model": "other"}), 404)
