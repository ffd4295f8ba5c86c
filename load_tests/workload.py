"""The workload: a fixed, seeded list of requests, identical for every server it is run against.

A request is a chat conversation or a completion prompt, plus its own max_tokens (fixed, or
drawn per request from a range). The body sent over SSE and inside a WebSocket message is the
same OpenAI body.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from triode.load_tests import prompts

Endpoint = Literal["chat", "completions"]
PromptSet = Literal["synthetic", "chat"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
WS_TYPES: dict[str, str] = {"chat": "chat.completion", "completions": "completion"}


@dataclass(frozen=True, slots=True)
class TokenRange:
    """A fixed count (`low == high`) or a range drawn uniformly per request, inclusive."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> TokenRange:
        """'128' or '16:256'."""
        low, _, high = text.partition(":")
        value = cls(int(low), int(high or low))
        if not 1 <= value.low <= value.high:
            raise ValueError(f"expected N or LOW:HIGH with 1 <= LOW <= HIGH, got {text!r}")
        return value

    def draw(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Per-run request options (the same for every request)."""

    model: str
    temperature: float = 0.0
    ignore_eos: bool = False
    include_usage: bool = True


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of the workload."""

    index: int
    endpoint: Endpoint
    messages: tuple[dict[str, str], ...] | None  # chat
    prompt: str | None  # completions
    max_tokens: int

    def body(self, options: SamplingOptions, *, stream: bool = True) -> dict[str, Any]:
        """The OpenAI request body."""
        body: dict[str, Any] = {
            "model": options.model,
            "max_tokens": self.max_tokens,
            "temperature": options.temperature,
            "stream": stream,
        }
        if self.endpoint == "chat":
            body["messages"] = [dict(m) for m in self.messages or ()]
        else:
            body["prompt"] = self.prompt
        if options.ignore_eos:  # vLLM's extension, honoured by triode; OpenAI would refuse it
            body["ignore_eos"] = True
        if stream and options.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body


def build_specs(
    num_requests: int,
    *,
    endpoint: Endpoint = "chat",
    prompt_set: PromptSet = "synthetic",
    input_len: TokenRange = TokenRange(100, 100),
    max_tokens: TokenRange = TokenRange(128, 128),
    seed: int = 0,
    tokenizer: Any = None,
) -> list[RequestSpec]:
    """`num_requests` seeded requests. Synthetic prompts need a tokenizer (see prompts.py);
    chat prompts cycle through the bundled set in a seeded order."""
    rng = random.Random(seed)
    specs = []
    if prompt_set == "synthetic":
        if tokenizer is None:
            tokenizer = prompts.load_tokenizer()
        texts = [
            prompts.synthetic_prompt(tokenizer, input_len.draw(rng), rng)
            for _ in range(num_requests)
        ]
        conversations = [({"role": "user", "content": t},) for t in texts]
    elif prompt_set == "chat":
        bundled = list(prompts.chat_prompts())
        order: list[tuple[dict[str, str], ...]] = []
        while len(order) < num_requests:
            rng.shuffle(bundled)
            order.extend(bundled)
        conversations = order[:num_requests]
    else:
        raise ValueError(f"unknown prompt set {prompt_set!r}")
    for i, conversation in enumerate(conversations):
        limit = max_tokens.draw(rng)
        if endpoint == "chat":
            specs.append(RequestSpec(i, endpoint, conversation, None, limit))
        else:
            specs.append(
                RequestSpec(i, endpoint, None, prompts.last_user_text(conversation), limit)
            )
    return specs
