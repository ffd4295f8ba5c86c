"""OpenAI response objects: streaming chunks and whole responses, for chat and completions.

`ChoiceState` accumulates what one choice has produced so far; `ChatFormat` and
`CompletionFormat` turn deltas and states into the exact objects OpenAI's API returns. A chat
request offered tools runs each choice's text through a ToolCallParser (web/tool_parser.py):
content and `tool_calls` are separated as the text streams, and a choice that called a tool
ends with finish_reason "tool_calls" (as OpenAI's and vLLM's do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from triode.streaming.delta import TokenLogprob
from triode.web.prepare import CHAT, PreparedRequest
from triode.web.tool_parser import ParsedDelta, ToolCallParser

# The text of one token id (for logprobs): `InputProcessor.token_text`, memoised.
TokenText = Callable[[int], str]


@dataclass(slots=True)
class ChoiceState:
    index: int
    text_parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_output_tokens: int = 0
    text_offset: int = 0  # completions' logprobs: where the next token's text starts
    parser: ToolCallParser | None = None  # streamed chat with tools: text -> calls so far

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class ResponseFormat:
    """What chat and completions share: the chunk envelope and usage."""

    chunk_object = ""
    response_object = ""

    def __init__(self, prepared: PreparedRequest, token_texts: TokenText) -> None:
        self.prepared = prepared
        self.token_texts = token_texts

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        p = self.prepared
        chunk: dict[str, Any] = {
            "id": p.response_id,
            "object": self.chunk_object,
            "created": p.created,
            "model": p.model,
            "choices": choices,
        }
        if p.include_usage:
            chunk["usage"] = None  # as OpenAI does: only the final chunk carries usage
        return chunk

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        chunk = self.chunk([])
        chunk["usage"] = usage
        return chunk

    def response(self, choices: list[ChoiceState], usage: dict[str, Any]) -> dict[str, Any]:
        p = self.prepared
        return {
            "id": p.response_id,
            "object": self.response_object,
            "created": p.created,
            "model": p.model,
            "choices": [self.final_choice(c) for c in choices],
            "usage": usage,
        }

    def initial_chunks(self, choices: list[ChoiceState]) -> list[dict[str, Any]]:
        return []

    def delta_chunk(
        self, state: ChoiceState, text: str, logprobs: list[TokenLogprob] | None, is_final: bool
    ) -> dict[str, Any] | None:
        """The chunk for one delta, or None when it has nothing to show yet."""
        raise NotImplementedError

    def final_choice(self, state: ChoiceState) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(ResponseFormat):
    chunk_object = "chat.completion.chunk"
    response_object = "chat.completion"

    def initial_chunks(self, choices: list[ChoiceState]) -> list[dict[str, Any]]:
        # The role goes first, before any token exists, so clients can render the turn at once.
        return [
            self.chunk(
                [
                    {
                        "index": c.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for c in choices
        ]

    def delta_chunk(
        self, state: ChoiceState, text: str, logprobs: list[TokenLogprob] | None, is_final: bool
    ) -> dict[str, Any] | None:
        delta: dict[str, Any] = {"content": text} if text else {}
        finish_reason = state.finish_reason
        if self.prepared.tools is not None:
            parser = state.parser or self._new_parser()
            state.parser = parser
            parsed = parser.feed(text)
            if is_final:
                _merge(parsed, parser.finish())
                finish_reason = _finish_reason(state.finish_reason, parser)
            delta = _parsed_delta(parsed)
            if not delta and not logprobs and not is_final:
                return None  # held back: maybe the start of a call
        choice: dict[str, Any] = {
            "index": state.index,
            "delta": delta,
            "logprobs": self._logprobs(logprobs) if logprobs else None,
            "finish_reason": finish_reason if is_final else None,
        }
        if is_final:
            choice["stop_reason"] = state.stop_reason
        return self.chunk([choice])

    def final_choice(self, state: ChoiceState) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": state.text}
        finish_reason = state.finish_reason
        if self.prepared.tools is not None:
            # The whole text through a fresh parser: the same calls a stream would send.
            parser = self._new_parser()
            parser.feed(state.text)
            parser.finish()
            message["content"] = parser.content
            if parser.calls:
                message["tool_calls"] = [c.to_object() for c in parser.calls]
            finish_reason = _finish_reason(state.finish_reason, parser)
        return {
            "index": state.index,
            "message": message,
            "logprobs": self._logprobs(state.logprobs)
            if self.prepared.num_top_logprobs is not None
            else None,
            "finish_reason": finish_reason,
            "stop_reason": state.stop_reason,
        }

    def _new_parser(self) -> ToolCallParser:
        plan = self.prepared.tools
        assert plan is not None
        return ToolCallParser(plan.fmt, plan.max_calls)

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        k = self.prepared.num_top_logprobs or 0
        return {"content": [self._entry(e, k) for e in entries]}

    def _entry(self, entry: TokenLogprob, k: int) -> dict[str, Any]:
        token = self.token_texts(entry.token_id)
        return {
            "token": token,
            "logprob": entry.logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in ((self.token_texts(i), lp) for i, lp in entry.top[:k])
            ],
        }


def _merge(into: ParsedDelta, more: ParsedDelta) -> None:
    into.content += more.content
    for d in more.tool_calls:
        into.add_arguments(d.index, d.arguments, d.call)


def _parsed_delta(parsed: ParsedDelta) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if parsed.content:
        delta["content"] = parsed.content
    if parsed.tool_calls:
        delta["tool_calls"] = [d.to_object() for d in parsed.tool_calls]
    return delta


def _finish_reason(reason: str | None, parser: ToolCallParser) -> str | None:
    """The model called a tool and stopped by itself: "tool_calls" (a call cut off by
    max_tokens keeps "length")."""
    return "tool_calls" if parser.calls and reason == "stop" else reason


class CompletionFormat(ResponseFormat):
    chunk_object = "text_completion"
    response_object = "text_completion"

    def initial_chunks(self, choices: list[ChoiceState]) -> list[dict[str, Any]]:
        if not self.prepared.echo:
            return []
        return [
            self.chunk([self._choice(c.index, c.text, None, None)])
            for c in choices
            if c.text  # the echoed prompt, already in the state
        ]

    def delta_chunk(
        self, state: ChoiceState, text: str, logprobs: list[TokenLogprob] | None, is_final: bool
    ) -> dict[str, Any]:
        logprobs_obj = None
        if logprobs:
            logprobs_obj, state.text_offset = self._logprobs(logprobs, state.text_offset)
        choice = self._choice(
            state.index, text, logprobs_obj, state.finish_reason if is_final else None
        )
        if is_final:
            choice["stop_reason"] = state.stop_reason
        return self.chunk([choice])

    def final_choice(self, state: ChoiceState) -> dict[str, Any]:
        logprobs = None
        if self.prepared.num_top_logprobs is not None:  # never with echo (refused up front)
            logprobs, _ = self._logprobs(state.logprobs, 0)
        choice = self._choice(state.index, state.text, logprobs, state.finish_reason)
        choice["stop_reason"] = state.stop_reason
        return choice

    @staticmethod
    def _choice(
        index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def _logprobs(self, entries: list[TokenLogprob], start: int) -> tuple[dict[str, Any], int]:
        """The logprobs object for these tokens, and the text offset after them."""
        k = self.prepared.num_top_logprobs or 0
        tokens, offsets = [], []
        offset = start
        for e in entries:
            token = self.token_texts(e.token_id)
            tokens.append(token)
            offsets.append(offset)
            offset += len(token)
        obj = {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self.token_texts(i): lp for i, lp in e.top[:k]} for e in entries],
            "text_offset": offsets,
        }
        return obj, offset


def format_for(prepared: PreparedRequest, token_texts: TokenText) -> ResponseFormat:
    return (
        ChatFormat(prepared, token_texts)
        if prepared.kind == CHAT
        else CompletionFormat(prepared, token_texts)
    )
