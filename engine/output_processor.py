"""Output processing: sampled ids -> text deltas, with stop strings, for every sample.

Runs in the engine after each step, in two parts. While the scheduler takes its one finish
decision per sample (`Scheduler.update_from_output`), it asks `check_stop_strings` whether the
new tokens complete a stop string: that detokenizes them and matches the request's stop
strings, keeping the text. `make_deltas` then turns what each sample got into its delta.
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
    num_detokenized_tokens: int = 0
    num_sent_tokens: int = 0
    text: str = ""  # text of the detokenized tokens not yet in a delta


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

    def check_stop_strings(self, request: Request, status: RequestStatus | None) -> str | None:
        """Detokenize the sample's new tokens and match its stop strings (the scheduler's
        StopStringChecker). `status` is the scheduler's decision from the tokens alone: a
        closing eos or stop token adds no text (unless stop strings are to be included), and
        a sample that ends releases the detokenizer's held-back bytes."""
        state = self._state(request)
        new_ids = request.output_token_ids[state.num_detokenized_tokens :]
        state.num_detokenized_tokens = request.num_output_tokens
        if state.stop.matched is not None:
            return state.stop.matched
        params = request.sampling_params
        ended_by_token = status == RequestStatus.FINISHED_STOPPED
        text_ids = (
            new_ids[:-1] if ended_by_token and not params.include_stop_str_in_output else new_ids
        )
        text = state.detokenizer.add_tokens(text_ids) if text_ids else ""
        if status is not None:
            text += state.detokenizer.flush()
        state.text += state.stop.feed(text)
        return state.stop.matched

    def make_deltas(
        self,
        updated: list[Request],
        logprobs: dict[str, tuple[float, list[tuple[int, float]]]] | None = None,
    ) -> list[RequestDelta]:
        """Deltas for the samples that got tokens this step, after the scheduler's finish
        decision (a finished sample's delta is its last)."""
        deltas: list[RequestDelta] = []
        for request in updated:
            state = self._state(request)
            if state.num_detokenized_tokens < request.num_output_tokens:
                # Updated without a stop-string check (the scheduler had none).
                self.check_stop_strings(request, request.status if request.is_finished else None)
            is_first = state.num_sent_tokens == 0
            new_ids = request.output_token_ids[state.num_sent_tokens :]
            state.num_sent_tokens = request.num_output_tokens
            text, state.text = state.text, ""
            if request.is_finished and state.stop.matched is None:
                text += state.stop.flush()
            delta = self._delta(request, text, new_ids)
            if is_first and request.index == 0 and request.first_scheduled_time is not None:
                delta.queue_time_s = request.first_scheduled_time - request.arrival_time
            if logprobs is not None and request.sampling_params.logprobs is not None:
                entry = logprobs.get(request.request_id)
                if entry is not None:
                    delta.logprobs = [TokenLogprob(new_ids[-1], entry[0], entry[1])]
            if request.is_finished:
                self._close(request, delta, request.status.finish_reason)
            deltas.append(delta)
        return deltas

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
