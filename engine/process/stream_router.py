"""Handing engine deltas to the request streams, and the latency metrics they imply.

The actor keeps one `Tracked` per request it accepted; `route_deltas` pushes each delta to its
stream (dropping deltas of requests no longer tracked), updates the counters and the TTFT /
inter-token / end-to-end histograms, and forgets a request once its stream has finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from triode.engine.metrics import EngineMetrics, EngineStats
from triode.engine.process.step_profile import StepProfile
from triode.streaming.delta import RequestDelta
from triode.streaming.request_stream import RequestStream


@dataclass(slots=True)
class Tracked:
    """Per-request timing for the latency metrics."""

    stream: RequestStream
    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    num_prompt_tokens: int = 0


def route_deltas(
    deltas: list[RequestDelta],
    tracked_requests: dict[str, Tracked],
    stats: EngineStats,
    metrics: EngineMetrics | None,
    profile: StepProfile | None = None,
) -> None:
    now = time.monotonic()
    for delta in deltas:
        tracked = tracked_requests.get(delta.request_id)
        if tracked is None:
            continue
        if delta.token_ids:
            stats.num_generation_tokens += len(delta.token_ids)
            if metrics is not None:
                metrics.generation_tokens.inc(len(delta.token_ids))
            if tracked.first_token is None:
                tracked.first_token = now
                if profile is not None:
                    profile.add_first_token(delta.queue_time_s, now - tracked.arrival)
                stats.num_prompt_tokens += delta.num_prompt_tokens
                if metrics is not None:
                    metrics.time_to_first_token.observe(now - tracked.arrival)
            elif tracked.last_token is not None and metrics is not None:
                metrics.inter_token_latency.observe(now - tracked.last_token)
            tracked.last_token = now
        if delta.queue_time_s is not None and metrics is not None:
            metrics.request_queue_time.observe(delta.queue_time_s)
        tracked.num_prompt_tokens = delta.num_prompt_tokens or tracked.num_prompt_tokens
        tracked.stream.push_nowait(delta)
        if delta.is_finished and metrics is not None:
            metrics.finished(delta.finish_reason or "unknown")
        if tracked.stream.is_finished:
            del tracked_requests[delta.request_id]
            if metrics is not None:
                metrics.e2e_request_latency.observe(now - tracked.arrival)
                metrics.prompt_tokens.inc(tracked.num_prompt_tokens)


def error_delta(
    request_id: str, index: int, message: str, finish_reason: str = "error"
) -> RequestDelta:
    return RequestDelta(
        request_id=request_id, index=index, finish_reason=finish_reason, error=message
    )
