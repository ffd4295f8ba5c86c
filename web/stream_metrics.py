"""Prometheus series of the resumable streams (resumes, expiries, evictions, buffered bytes).

Read from the StreamStore's counters at scrape time by a custom collector, in a registry of
their own that /metrics renders after the engine's.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from triode.streaming.stream_store import StreamStore


class StreamCollector(Collector):
    def __init__(self, store: StreamStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        store, counters = self._store, self._store.counters
        totals = (
            ("started", "Resumable streams started.", counters.num_started),
            ("resumes", "Readers that attached to a held stream (resumes, second tabs).",
             counters.num_resumes),
            ("expired", "Generations stopped because no client resumed within the window.",
             counters.num_expired),
            ("evicted", "Streams stopped and dropped to keep all buffers under their bound.",
             counters.num_evicted),
            ("overflowed", "Streams stopped at their own buffer bound.", counters.num_overflowed),
            ("cancelled", "Streams a client stopped.", counters.num_cancelled),
        )  # fmt: skip
        for name, text, value in totals:
            yield CounterMetricFamily(f"triode:resumable_streams_{name}", text, value=value)
        yield GaugeMetricFamily(
            "triode:resumable_stream_buffered_bytes",
            "Bytes held in the buffers of resumable streams.",
            value=store.num_bytes,
        )
        yield GaugeMetricFamily(
            "triode:resumable_streams_held", "Resumable streams held now.", value=store.num_streams
        )


def stream_metrics_renderer(store: StreamStore) -> CollectorRegistry:
    """A registry holding only the streams' collector (render with `generate_latest`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(store))
    return registry
