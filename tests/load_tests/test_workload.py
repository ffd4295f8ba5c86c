"""Workloads: seeded and identical across runs, prompts of the asked token length, bodies."""

from __future__ import annotations

import random

import pytest

from triode.load_tests.prompts import chat_prompts, count_tokens, load_tokenizer, synthetic_prompt
from triode.load_tests.runner import arrival_offsets
from triode.load_tests.workload import SamplingOptions, TokenRange, build_specs


@pytest.fixture(scope="module")
def tok(bundled_folder):
    return load_tokenizer(bundled_folder)


def test_synthetic_prompts_have_the_asked_token_count(tok):
    rng = random.Random(0)
    for n in (1, 7, 100, 333, 1000):
        assert count_tokens(tok, synthetic_prompt(tok, n, rng)) == n


def test_specs_are_seeded(tok):
    kwargs = {"input_len": TokenRange(10, 50), "max_tokens": TokenRange(4, 64), "tokenizer": tok}
    a = build_specs(20, seed=3, **kwargs)
    assert a == build_specs(20, seed=3, **kwargs)
    assert a != build_specs(20, seed=4, **kwargs)
    assert {s.max_tokens for s in a} <= set(range(4, 65)) and len({s.max_tokens for s in a}) > 1
    lengths = [count_tokens(tok, s.messages[0]["content"]) for s in a]
    assert min(lengths) >= 10 and max(lengths) <= 50


def test_bundled_chat_prompts():
    conversations = chat_prompts()
    assert len(conversations) >= 50
    for messages in conversations:
        assert messages[-1]["role"] == "user" and messages[-1]["content"].strip()
        assert {m["role"] for m in messages} <= {"system", "user", "assistant"}
    specs = build_specs(120, prompt_set="chat", endpoint="completions", seed=1)
    assert all(isinstance(s.prompt, str) and s.messages is None for s in specs)
    assert len({s.prompt for s in specs}) == len(conversations)  # every one is used


def test_request_bodies():
    [chat] = build_specs(1, prompt_set="chat", max_tokens=TokenRange(32, 32))
    body = chat.body(SamplingOptions("m", temperature=0.5, ignore_eos=True))
    assert body["model"] == "m" and body["max_tokens"] == 32 and body["temperature"] == 0.5
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["messages"][-1]["role"] == "user"
    plain = chat.body(SamplingOptions("m"), stream=False)
    assert "ignore_eos" not in plain and "stream_options" not in plain


def test_token_range_parse():
    assert TokenRange.parse("128") == TokenRange(128, 128)
    assert (
        TokenRange.parse("16:256") == TokenRange(16, 256) and str(TokenRange(16, 256)) == "16:256"
    )
    for bad in ("0", "9:3", "x"):
        with pytest.raises(ValueError):
            TokenRange.parse(bad)


def test_poisson_arrivals_are_seeded_with_the_asked_rate():
    offsets = arrival_offsets(20000, rate=50.0, seed=7)
    assert offsets[0] == 0.0 and offsets == arrival_offsets(20000, 50.0, 7)
    assert offsets == sorted(offsets)
    assert 20000 / offsets[-1] == pytest.approx(50.0, rel=0.03)
