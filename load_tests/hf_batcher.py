"""The transformers baseline's model worker: static batches through `generate()`, streamed.

One trio task owns the model. When it is free it takes every request already waiting (up to
`max_batch_size`, all with the first one's temperature) as one static batch, left-padded, and
runs `generate()` in a thread; a streamer hands each step's tokens back to the trio loop in one
call per step. A batch runs until its last row is done: rows that finish early (EOS, their own
max_tokens, or a client that left) keep being computed and thrown away, which is exactly the
waste continuous batching removes. Requests that arrive meanwhile wait for the next batch.
`max_batch_size=1` serves one request at a time.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import trio
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class HFRequest:
    """One request's state; `events` gets ("text", str) items, then ("end", finish_reason) or
    ("error", message)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    ignore_eos: bool
    events: trio.MemorySendChannel[tuple[str, str]]
    output_ids: list[int] = field(default_factory=list)
    num_chars_sent: int = 0
    is_done: bool = False  # finished, or the client left: its row's tokens are ignored
    is_ended: bool = False  # its last event was sent


def open_request(
    prompt_ids: list[int], max_tokens: int, temperature: float, ignore_eos: bool
) -> tuple[HFRequest, trio.MemoryReceiveChannel[tuple[str, str]]]:
    # At most one event per token plus the end: this bound is never reached, so delivering
    # from the model's step never blocks, whatever the client does.
    send, receive = trio.open_memory_channel[tuple[str, str]](max_tokens + 2)
    return HFRequest(prompt_ids, max_tokens, temperature, ignore_eos, send), receive


class HFBatcher:
    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        )
        self._inbox_send, self._inbox = trio.open_memory_channel[HFRequest](4096)
        self._deferred: deque[HFRequest] = deque()  # waiting, but with another temperature

    def submit_nowait(self, request: HFRequest) -> None:
        """Queue a request; raises trio.WouldBlock when 4,096 are already waiting."""
        self._inbox_send.send_nowait(request)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch = await self._next_batch()
            batch = [r for r in batch if not r.is_done]  # clients that left while queued
            if batch:
                token = trio.lowlevel.current_trio_token()
                await trio.to_thread.run_sync(self._generate, batch, token)

    async def _next_batch(self) -> list[HFRequest]:
        first = self._deferred.popleft() if self._deferred else await self._inbox.receive()
        batch = [first]
        waiting = list(self._deferred)
        self._deferred.clear()
        while True:
            try:
                waiting.append(self._inbox.receive_nowait())
            except trio.WouldBlock:
                break
        for request in waiting:
            if len(batch) < self.max_batch_size and request.temperature == first.temperature:
                batch.append(request)
            else:
                self._deferred.append(request)
        return batch

    def _generate(self, batch: list[HFRequest], token: trio.lowlevel.TrioToken) -> None:
        """In a worker thread: one static batch, start to end."""
        length = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.tensor(
            [[self.pad_id] * (length - len(r.prompt_ids)) + r.prompt_ids for r in batch]
        )
        attention_mask = torch.tensor(
            [[0] * (length - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch]
        )
        temperature = batch[0].temperature
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max(r.max_tokens for r in batch),
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_ids,
                    streamer=_BatchStreamer(self, batch, token),
                    stopping_criteria=[_AllRowsDone(batch)],
                    logits_processor=LogitsProcessorList([_HoldEos(batch, self.eos_ids)]),
                    **sampling,
                )
        except Exception as exc:  # every row must still end, or its client waits forever
            logger.exception("generate() failed")
            trio.from_thread.run_sync(_end_all, batch, ("error", repr(exc)), trio_token=token)
        trio.from_thread.run_sync(_end_all, batch, ("end", "length"), trio_token=token)

    def step_events(
        self, batch: list[HFRequest], tokens: list[int]
    ) -> list[tuple[HFRequest, str, str | None]]:
        """(request, new text, finish reason or None) for each live row, updating its state."""
        events = []
        for request, token_id in zip(batch, tokens):
            if request.is_done:
                continue
            finish = None
            if token_id in self.eos_ids and not request.ignore_eos:
                finish = "stop"
            else:
                request.output_ids.append(token_id)
                if len(request.output_ids) >= request.max_tokens:
                    finish = "length"
            text = self.tokenizer.decode(request.output_ids, skip_special_tokens=True)
            # A trailing U+FFFD is a character still incomplete: hold it until it is whole.
            new_text = (
                "" if text.endswith("\ufffd") and not finish else text[request.num_chars_sent :]
            )
            request.num_chars_sent += len(new_text)
            if finish is not None:
                request.is_done = True
            events.append((request, new_text, finish))
        return events


def _deliver(events: list[tuple[HFRequest, str, str | None]]) -> None:
    """In the trio thread: push one step's events to their requests' channels."""
    for request, text, finish in events:
        if text:
            _send(request, ("text", text))
        if finish is not None:
            _end(request, ("end", finish))


def _end_all(batch: list[HFRequest], last: tuple[str, str]) -> None:
    for request in batch:
        request.is_done = True
        _end(request, last)


def _end(request: HFRequest, last: tuple[str, str]) -> None:
    if not request.is_ended:
        request.is_ended = True
        _send(request, last)
        request.events.close()


def _send(request: HFRequest, event: tuple[str, str]) -> None:
    try:
        request.events.send_nowait(event)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        request.is_done = True  # the client left


class _BatchStreamer(BaseStreamer):
    def __init__(
        self, batcher: HFBatcher, batch: list[HFRequest], token: trio.lowlevel.TrioToken
    ) -> None:
        self._batcher = batcher
        self._batch = batch
        self._token = token
        self._is_prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self._is_prompt:  # generate() first hands over the prompt itself
            self._is_prompt = False
            return
        tokens = value.reshape(len(self._batch), -1)[:, -1].tolist()
        events = self._batcher.step_events(self._batch, tokens)
        if events:
            trio.from_thread.run_sync(_deliver, events, trio_token=self._token)

    def end(self) -> None:
        pass


class _AllRowsDone(StoppingCriteria):
    """Per row: done once its request is (so the batch stops when every row is)."""

    def __init__(self, batch: list[HFRequest]) -> None:
        self._batch = batch

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.tensor([r.is_done for r in self._batch], dtype=torch.bool)


class _HoldEos(LogitsProcessor):
    """`ignore_eos` rows may not pick an end-of-sequence token."""

    def __init__(self, batch: list[HFRequest], eos_ids: list[int]) -> None:
        self._rows = [i for i, r in enumerate(batch) if r.ignore_eos]
        self._eos_ids = eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._rows:
            scores[torch.tensor(self._rows)[:, None], torch.tensor(self._eos_ids)] = -torch.inf
        return scores


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)
