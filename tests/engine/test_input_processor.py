"""The input processor: the GIL-friendly encoding path gives the tokenizer's own ids, a text
that cannot fit is refused by its length, and no two threads ever share a tokenizer."""

from __future__ import annotations

import threading

import pytest
import trio

from triode.engine import (
    ContextLengthError,
    InputProcessor,
    InvalidRequestError,
    ModelInfo,
    Preprocessor,
    SamplingParams,
)
from triode.engine.input_processor import encode_text, render_chat

TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "Ünïcödé, emoji 🦊 and CJK 漢字",
    "<|im_start|>user\nspecial tokens in text<|im_end|>",
    "line\n\nbreaks\ttabs",
    "x" * 300,
]


@pytest.fixture(scope="module")
def info(bundled_folder) -> ModelInfo:
    return ModelInfo("smol", str(bundled_folder), 64, 49152, (2,))


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_text_gives_the_tokenizers_ids(tokenizer, add_special_tokens):
    for text in TEXTS:
        expected = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        assert encode_text(tokenizer, text, add_special_tokens) == expected, text


def test_a_text_too_long_for_the_context_is_refused_with_its_length(tokenizer, info):
    worker = Preprocessor(info, tokenizer)
    text = "one two three four " * 40  # 161 tokens, over the 64 of `info`
    num_tokens = len(tokenizer.encode(text))
    assert num_tokens > 64
    with pytest.raises(ContextLengthError) as refused:
        worker.encode(text)
    assert refused.value.param == "prompt" and f"has {num_tokens} tokens" in str(refused.value)
    assert len(worker.encode("one two three")) == 3


def test_chat_rendering_matches_the_template(tokenizer, info):
    messages = [{"role": "user", "content": "Name three colors."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(tokenizer, messages) == text
    worker = Preprocessor(info, tokenizer)
    assert worker.encode_chat(messages) == tokenizer.encode(text, add_special_tokens=False)
    with pytest.raises(InvalidRequestError) as refused:
        render_chat(tokenizer, [{"role": "user"}])  # the template needs `content`
    assert refused.value.param == "messages"


async def test_each_worker_thread_has_its_own_tokenizer(info, tokenizer):
    processor = await trio.to_thread.run_sync(InputProcessor, info, 3, tokenizer)
    in_use: set[int] = set()
    lock = threading.Lock()
    seen_tokenizers: set[int] = set()
    overlaps: list[int] = []

    def work(worker: Preprocessor) -> list[int]:
        key = id(worker.tokenizer)
        assert worker.tokenizer is not tokenizer  # never the caller's instance
        with lock:
            if key in in_use:
                overlaps.append(key)
            in_use.add(key)
            seen_tokenizers.add(key)
        try:
            return worker.encode("The quick brown fox " * 10)
        finally:
            with lock:
                in_use.discard(key)

    results: list[list[int]] = []

    async def one() -> None:
        results.append(await processor.run(work))

    async with trio.open_nursery() as nursery:
        for _ in range(60):
            nursery.start_soon(one)
    assert not overlaps
    assert len(seen_tokenizers) == 3 and len(results) == 60
    assert all(r == results[0] for r in results)
    assert processor.token_text(results[0][0]) == tokenizer.decode([results[0][0]])


async def test_process_checks_against_the_model(info, tokenizer):
    processor = await trio.to_thread.run_sync(InputProcessor, info, 1, tokenizer)
    ok = await processor.process("Hello world", SamplingParams(max_tokens=4))
    assert ok.prompt_token_ids == tokenizer.encode("Hello world") and ok.max_tokens == 4
    with pytest.raises(ContextLengthError) as refused:
        await processor.process([1] * 60, SamplingParams(max_tokens=10))
    assert refused.value.param == "max_tokens"
