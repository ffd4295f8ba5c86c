"""Prometheus metrics of one engine, named like vLLM's with the prefix `triode:`.

Each engine has its own registry (tests run several servers in one process). The async engine
feeds it; `/metrics` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from triode.engine.spec_decode.stats import SpecDecodeStats

disable_created_metrics()  # the *_created series only add noise to every scrape

_TTFT_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
_ITL_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


@dataclass(slots=True)
class EngineStats:
    """The engine's counters (totals since start) and gauges (as of the last step)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks held by requests
    num_prompt_tokens: int = 0  # prompts of requests that produced their first token
    num_generation_tokens: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    spec_decode: SpecDecodeStats | None = None  # None: speculative decoding is off


class EngineMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"triode:{name}", doc, labels, registry=r).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"triode:{name}", doc, labels, registry=r).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"triode:{name}", doc, labels, buckets=buckets, registry=r).labels(
                model_name
            )

        self.num_requests_running = gauge("num_requests_running", "Requests in the running batch.")
        self.num_requests_waiting = gauge(
            "num_requests_waiting", "Requests waiting to be scheduled."
        )
        self.kv_cache_usage_perc = gauge(
            "kv_cache_usage_perc", "Fraction of KV-cache blocks held by requests (0 to 1)."
        )
        self.engine_healthy = gauge("engine_healthy", "1 while the engine can serve requests.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.prefix_cache_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = counter(
            "prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self.num_preemptions = counter(
            "num_preemptions", "Requests preempted for lack of KV blocks."
        )
        self.spec_decode_num_drafts = counter(
            "spec_decode_num_drafts", "Speculative verifications (one per request and step)."
        )
        self.spec_decode_num_draft_tokens = counter(
            "spec_decode_num_draft_tokens", "Tokens proposed by the speculative proposer."
        )
        self.spec_decode_num_accepted_tokens = counter(
            "spec_decode_num_accepted_tokens", "Proposed tokens the model accepted."
        )
        self._spec_accepted_per_pos = Counter(
            "triode:spec_decode_num_accepted_tokens_per_pos",
            "Proposed tokens the model accepted, by position in the proposal (0 = first).",
            ["model_name", "position"],
            registry=r,
        )
        self._last_spec = SpecDecodeStats()
        self._success = Counter(
            "triode:request_success",
            "Finished requests by finish reason.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self._model_name = model_name
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Time from arrival to the first token.", _TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between consecutive tokens.", _ITL_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "Time from arrival to the last token.", _E2E_BUCKETS
        )
        self.request_queue_time = histogram(
            "request_queue_time_seconds",
            "Time from arrival to first being scheduled.",
            _E2E_BUCKETS,
        )
        self._last_queries = 0
        self._last_hits = 0
        self._last_preemptions = 0
        self.engine_healthy.set(1)

    def finished(self, reason: str) -> None:
        self._success.labels(self._model_name, reason).inc()

    def update_engine_state(self, stats: EngineStats) -> None:
        """Refresh the gauges and advance the counters kept as totals by the engine."""
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage_perc.set(stats.kv_cache_usage)
        self.prefix_cache_queries.inc(stats.prefix_cache_queries - self._last_queries)
        self.prefix_cache_hits.inc(stats.prefix_cache_hits - self._last_hits)
        self.num_preemptions.inc(stats.num_preemptions - self._last_preemptions)
        self._last_queries, self._last_hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        self._last_preemptions = stats.num_preemptions
        if stats.spec_decode is not None:
            self._update_spec_decode(stats.spec_decode)

    def _update_spec_decode(self, spec: SpecDecodeStats) -> None:
        last = self._last_spec
        self.spec_decode_num_drafts.inc(spec.num_drafts - last.num_drafts)
        self.spec_decode_num_draft_tokens.inc(spec.num_draft_tokens - last.num_draft_tokens)
        self.spec_decode_num_accepted_tokens.inc(
            spec.num_accepted_tokens - last.num_accepted_tokens
        )
        for position, count in enumerate(spec.accepted_per_position):
            before = (
                last.accepted_per_position[position]
                if position < len(last.accepted_per_position)
                else 0
            )
            self._spec_accepted_per_pos.labels(self._model_name, str(position)).inc(count - before)
        self._last_spec = spec.copy()

    def render(self) -> bytes:
        return generate_latest(self.registry)
