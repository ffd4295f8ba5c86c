"""The maths: percentiles, distributions, the summary, the throughput timeline (numpy inside)."""

from __future__ import annotations

import math
import random

import pytest

from triode.load_tests.record import RequestRecord
from triode.load_tests.stats import (
    Distribution,
    Summary,
    cdf,
    percentile,
    summarize,
    token_timeline,
)


def ok(index: int, start: float, chunks: list[float], e2e: float, tokens: int | None = None):
    return RequestRecord(
        index,
        "sse",
        start,
        chunk_times=chunks,
        e2e=e2e,
        output_tokens=len(chunks) if tokens is None else tokens,
        prompt_tokens=10,
        is_usage_reported=tokens is not None,
    )


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_is_linear_between_closest_ranks(n):
    """The definition written out: rank (n - 1) q / 100, interpolated between its neighbours."""
    rng = random.Random(n)
    values = [rng.expovariate(1.0) for _ in range(n)]
    ordered = sorted(values)
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        rank = (n - 1) * q / 100
        low, high = math.floor(rank), min(math.floor(rank) + 1, n - 1)
        expected = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        assert percentile(values, q) == pytest.approx(expected, rel=1e-12)
        assert isinstance(percentile(values, q), float)


def test_percentile_exact_values():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5  # interpolated, input unsorted
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(101))), 90) == 90.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution():
    d = Distribution.of([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (d.count, d.mean, d.p50, d.max) == (5, 4.0, 3.0, 10.0)
    assert d.p90 == pytest.approx(7.6) and d.p99 == pytest.approx(9.76)
    empty = Distribution.of([])
    assert empty.count == 0 and math.isnan(empty.p50)


def test_summary_counts_only_completed_requests():
    records = [
        ok(0, 0.0, [0.5, 0.6, 0.8], e2e=0.9),  # gaps 0.1, 0.2; 3 tokens counted from chunks
        ok(1, 1.0, [1.0, 1.5], e2e=2.0, tokens=5),  # gap 0.5; usage says 5 tokens in 2 chunks
        RequestRecord(2, "ws", 0.2, chunk_times=[0.3], error="mid_stream", output_tokens=1),
        RequestRecord(3, "ws", 0.3, error="http_503"),
        RequestRecord(4, "sse", 0.4, chunk_times=[0.5, 0.7], output_tokens=2, is_abandoned=True),
    ]
    s = summarize(records, duration_s=4.0)
    assert (s.num_requests, s.num_ok, s.num_errors, s.num_abandoned) == (5, 2, 2, 1)
    assert s.errors_by_kind == {"mid_stream": 1, "http_503": 1}
    assert s.output_tokens == 8 and s.prompt_tokens == 20
    assert s.output_tokens_per_s == 2.0 and s.requests_per_s == 0.5
    assert s.ttft.count == 2 and s.ttft.p50 == pytest.approx(0.75)
    assert s.itl.count == 3 and s.itl.p50 == pytest.approx(0.2) and s.itl.max == pytest.approx(0.5)
    # TPOT: (0.9 - 0.5) / 2 and (2.0 - 1.0) / 4
    assert s.tpot.mean == pytest.approx((0.2 + 0.25) / 2)
    assert s.e2e.p50 == pytest.approx(1.45)
    assert s.is_usage_reported is False  # request 0's count came from its chunks


def test_summary_json_roundtrip_keeps_empty_distributions():
    s = summarize([RequestRecord(0, "sse", 0.0, error="connect")], duration_s=1.0)
    data = s.to_json()
    assert data["ttft"]["p50"] is None  # JSON has no NaN
    back = Summary.from_json(data)
    assert back.num_errors == 1 and math.isnan(back.ttft.p50)
    assert summarize([], 0.0).output_tokens_per_s != summarize([], 0.0).output_tokens_per_s  # NaN


def test_token_timeline_spreads_usage_over_chunks():
    records = [
        ok(0, 0.0, [0.5, 1.5], e2e=1.6, tokens=4),  # 2 tokens per chunk
        ok(1, 2.0, [0.25], e2e=0.3),  # one token at t=2.25
        RequestRecord(2, "sse", 0.0, error="connect"),
    ]
    times, rates = token_timeline(records, bin_s=1.0)
    assert times == [0.0, 1.0, 2.0] and rates == [2.0, 2.0, 1.0]
    times, rates = token_timeline(records, bin_s=0.5)
    assert rates == [0.0, 4.0, 0.0, 4.0, 2.0]
    assert token_timeline([], 1.0) == ([], [])


def test_cdf():
    xs, ys = cdf([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0] and ys == [0.25, 0.5, 0.75, 1.0]


def test_itls_and_ttft_of_a_record():
    r = ok(0, 0.0, [0.1, 0.15, 0.3], e2e=0.31)
    assert r.ttft == 0.1 and r.itls == pytest.approx([0.05, 0.15]) and r.is_ok
    assert RequestRecord(1, "ws", 0.0).ttft is None
