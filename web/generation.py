"""Generation: one submitted request as an async iterator of OpenAI chunk objects.

Used by both SSE and WebSocket handlers. `aclose()` aborts whatever has not finished (shielded,
with a short timeout), so every exit path of a handler releases the request's KV blocks: the
client leaving, a cancel message, an error, or shutdown.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from triode.engine import AsyncEngine, Preprocessor
from triode.streaming.delta import RequestDelta
from triode.streaming.request_stream import RequestStream
from triode.web.errors import ApiError, internal_error, service_unavailable
from triode.web.formatting import ChoiceState, TokenText, format_for
from triode.web.prepare import PreparedRequest, prepare_request


class Generation:
    """The streams of one request's prompts, read in order, turned into chunk objects."""

    def __init__(
        self,
        engine: AsyncEngine,
        prepared: PreparedRequest,
        streams: list[RequestStream],
        token_texts: TokenText,
    ) -> None:
        self.prepared = prepared
        self._engine = engine
        self._streams = streams
        self._format = format_for(prepared, token_texts)
        n = prepared.params.n
        self._choices = [ChoiceState(i) for i in range(len(prepared.prompts) * n)]
        if prepared.echo:
            for i, choice in enumerate(self._choices):
                choice.text_parts.append(prepared.prompts[i // n].text or "")
        self._num_cached_tokens = [0] * len(streams)
        self._queued: deque[dict[str, Any]] = deque()
        self._is_started = False
        self._stream_pos = 0
        self._is_closed = False
        self.build_chunks = True  # off when only the final response is wanted

    @classmethod
    async def create(
        cls,
        engine: AsyncEngine,
        kind: str,
        body: bytes | dict[str, Any],
        check: Callable[[PreparedRequest], object] | None = None,
        *,
        tool_call_parser: str = "auto",
    ) -> Generation:
        """Prepare a request body in an input-processor worker thread, then submit it;
        `check` may refuse the prepared request (raising) before anything is submitted."""
        prepare = functools.partial(prepare_request, kind, body, tool_call_parser=tool_call_parser)
        return await cls.create_with(engine, prepare, check)

    @classmethod
    async def create_with(
        cls,
        engine: AsyncEngine,
        prepare: Callable[[Preprocessor], PreparedRequest],
        check: Callable[[PreparedRequest], object] | None = None,
    ) -> Generation:
        """`create` with another way from a body to a PreparedRequest (run in the worker)."""
        engine.check_serving()  # before any work: the refusal says why
        processor = engine.input_processor
        prepared = await processor.run(prepare)
        if check is not None:
            check(prepared)
        return await cls.start(engine, prepared, processor.token_text)

    @classmethod
    async def start(
        cls, engine: AsyncEngine, prepared: PreparedRequest, token_texts: TokenText
    ) -> Generation:
        """Submit every prompt, all or none."""
        num = len(prepared.prompts)
        ids = [f"{prepared.response_id}-{i}" for i in range(num)] if num > 1 else None
        streams = await engine.submit_all(prepared.engine_inputs, ids or [prepared.response_id])
        return cls(engine, prepared, streams, token_texts)

    # ---- iteration ----------------------------------------------------------------------------
    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._queued:
            if not self._is_started:
                self._is_started = True
                if self.build_chunks:
                    self._queued.extend(self._format.initial_chunks(self._choices))
                continue
            if self._stream_pos >= len(self._streams):
                raise StopAsyncIteration
            # NOTE: prompts are read one after the other; all of them generate concurrently in
            # the engine, and a later prompt's deltas wait coalesced in its stream meanwhile.
            try:
                delta = await self._streams[self._stream_pos].__anext__()
            except StopAsyncIteration:
                self._stream_pos += 1
                continue
            self._apply(self._stream_pos, delta)
        return self._queued.popleft()

    def _apply(self, prompt_pos: int, delta: RequestDelta) -> None:
        if delta.error is not None or delta.finish_reason in ("error", "abort"):
            raise _failure(delta)
        state = self._choices[prompt_pos * self.prepared.params.n + delta.index]
        if delta.text:
            state.text_parts.append(delta.text)
        if delta.logprobs:
            state.logprobs.extend(delta.logprobs)
        state.num_output_tokens = delta.num_output_tokens
        self._num_cached_tokens[prompt_pos] = max(
            self._num_cached_tokens[prompt_pos], delta.num_cached_tokens
        )
        is_final = delta.finish_reason is not None
        if is_final:
            state.finish_reason = delta.finish_reason
            state.stop_reason = delta.stop_reason
        # Deltas that add nothing visible (text held back by a possible stop string) are not
        # sent: empty chunks only confuse clients.
        if self.build_chunks and (delta.text or delta.logprobs or is_final):
            chunk = self._format.delta_chunk(state, delta.text, delta.logprobs, is_final)
            if chunk is not None:
                self._queued.append(chunk)

    # ---- results ------------------------------------------------------------------------------
    @property
    def usage(self) -> dict[str, Any]:
        num_prompt = sum(len(p.token_ids) for p in self.prepared.prompts)
        num_completion = sum(c.num_output_tokens for c in self._choices)
        return {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion,
            "prompt_tokens_details": {"cached_tokens": sum(self._num_cached_tokens)},
        }

    def usage_chunk(self) -> dict[str, Any]:
        return self._format.usage_chunk(self.usage)

    async def collect(self) -> dict[str, Any]:
        """Wait for every choice to finish; return the whole (non-streaming) response."""
        self.build_chunks = False
        try:
            async for _ in self:
                pass
        finally:
            await self.aclose()
        return self._format.response(self._choices, self.usage)

    async def aclose(self) -> None:
        """Abort what has not finished. Idempotent; works while the caller is being cancelled."""
        if self._is_closed:
            return
        self._is_closed = True
        await _abort(self._engine, [s for s in self._streams if not s.is_finished])


async def _abort(engine: AsyncEngine, streams: list[RequestStream]) -> None:
    # abort_nowait never blocks, so this is safe inside a cancelled handler's cleanup.
    for stream in streams:
        engine.abort_nowait(stream.request_id)


def _failure(delta: RequestDelta) -> ApiError:
    """A request the engine ended with an error after streaming began."""
    message = delta.error or "the request was aborted"
    if delta.finish_reason == "abort":  # the engine is shutting down
        return service_unavailable(message, "server_shutting_down", 1)
    return internal_error(message)
