"""Output processing: sampled ids -> text deltas, with stop strings, for every sample.

Runs in the engine after each step. Stop strings end a request here (the scheduler only knows
tokens), so `process` returns the ids the engine must finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from triode.engine.core.request import Request, RequestStatus
from triode.streaming.delta import RequestDelta, TokenLogprob
from triode.streaming.detokenizer import IncrementalDetokenizer, TokenDecoder
from triode.streaming.stop import StopStringMatcher


@dataclass(slots=True)
class _SampleState:
    detokenizer: IncrementalDetokenizer
    stop: StopStringMatcher
    num_sent_tokens: int = 0


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self._decoders = {
            True: TokenDecoder(tokenizer, skip_special_tokens=True),
            False: TokenDecoder(tokenizer, skip_special_tokens=False),
        }
        self._states: dict[str, _SampleState] = {}

    def _state(self, request: Request) -> _SampleState:
        state = self._states.get(request.request_id)
        if state is None:
            params = request.sampling_params
            decoder = self._decoders[params.skip_special_tokens]
            state = _SampleState(
                IncrementalDetokenizer(decoder, request.prompt_token_ids),
                StopStringMatcher(params.stop, params.include_stop_str_in_output),
            )
            self._states[request.request_id] = state
        return state

    def process(
        self,
        updated: list[Request],
        logprobs: dict[str, tuple[float, list[tuple[int, float]]]] | None = None,
    ) -> tuple[list[RequestDelta], list[Request]]:
        """Deltas for the requests that got tokens this step (some already finished by the
        scheduler), and the still-running requests that hit a stop string: the caller must
        finish those with FINISHED_STOPPED (their deltas already say "stop")."""
        deltas: list[RequestDelta] = []
        stopped: list[Request] = []
        for request in updated:
            state = self._state(request)
            is_first = state.num_sent_tokens == 0
            new_ids = request.output_token_ids[state.num_sent_tokens :]
            state.num_sent_tokens = request.num_output_tokens
            params = request.sampling_params
            # A closing eos / stop token adds no text unless stop strings are to be included.
            ended_by_token = request.status == RequestStatus.FINISHED_STOPPED
            text_ids = (
                new_ids[:-1]
                if ended_by_token and not params.include_stop_str_in_output
                else new_ids
            )
            text = state.detokenizer.add_tokens(text_ids) if text_ids else ""
            if request.is_finished:
                text += state.detokenizer.flush()
            delta = self._delta(request, state.stop.feed(text), new_ids)
            if is_first and request.index == 0 and request.first_scheduled_time is not None:
                delta.queue_time_s = request.first_scheduled_time - request.arrival_time
            if logprobs is not None and params.logprobs is not None:
                entry = logprobs.get(request.request_id)
                if entry is not None:
                    delta.logprobs = [TokenLogprob(new_ids[-1], entry[0], entry[1])]
            if state.stop.matched is not None:
                request.stop_reason = state.stop.matched
                if request.is_finished:
                    request.status = RequestStatus.FINISHED_STOPPED
                else:
                    stopped.append(request)
                self._close(request, delta, "stop")
            elif request.is_finished:
                delta.text += state.stop.flush()
                self._close(request, delta, request.status.finish_reason)
            deltas.append(delta)
        return deltas, stopped

    def finish(self, request: Request) -> RequestDelta:
        """The closing delta of a request ended outside the step (abort, error): held-back
        text is dropped."""
        delta = self._delta(request, "", [])
        self._close(request, delta, request.status.finish_reason)
        return delta

    def _close(self, request: Request, delta: RequestDelta, reason: str | None) -> None:
        delta.finish_reason = reason
        delta.stop_reason = request.stop_reason
        self._states.pop(request.request_id, None)

    @staticmethod
    def _delta(request: Request, text: str, token_ids: list[int]) -> RequestDelta:
        return RequestDelta(
            request_id=request.group_id,
            index=request.index,
            text=text,
            token_ids=list(token_ids),
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_cached_tokens=max(request.num_cached_tokens, 0),
        )
