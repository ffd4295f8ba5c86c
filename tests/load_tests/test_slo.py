"""SLO thresholds: parsing, checking, and the `run --slo` exit status against the tiny server."""

from __future__ import annotations

import math

import pytest
import trio

from triode.load_tests.cli import main
from triode.load_tests.record import RequestRecord
from triode.load_tests.slo import check_slo, parse_slo
from triode.load_tests.stats import summarize

pytestmark = pytest.mark.timeout(120)


def summary_of(ttfts: list[float], num_errors: int = 0):
    records = [
        RequestRecord(i, "sse", 0.0, [t, t + 0.05, t + 0.15], e2e=t + 0.2, output_tokens=3)
        for i, t in enumerate(ttfts)
    ]
    records += [RequestRecord(100 + i, "sse", 0.0, error="http_503") for i in range(num_errors)]
    return summarize(records, duration_s=2.0)


def test_parse_units_and_bounds():
    slo = parse_slo("ttft_p99=800ms, itl_p99=0.2s,e2e_max=1500,error_rate=1%,output_tok_s=10")
    by_name = {t.name: t for t in slo.thresholds}
    assert by_name["ttft_p99"].limit == pytest.approx(0.8) and by_name["ttft_p99"].is_upper
    assert by_name["itl_p99"].limit == pytest.approx(0.2)
    assert by_name["e2e_max"].limit == pytest.approx(1.5)  # a bare latency is milliseconds
    assert by_name["error_rate"].limit == pytest.approx(0.01)
    assert by_name["output_tok_s"].limit == 10 and not by_name["output_tok_s"].is_upper
    assert "errors" not in by_name  # an error figure was given: no implicit errors=0
    assert [t.name for t in parse_slo("ttft_p50=1s").thresholds] == ["ttft_p50", "errors"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p99", "expected NAME=VALUE"),
        ("ttft_p42=1s", "unknown figure"),
        ("ttft_p99=1%", "a latency takes"),
        ("errors=1ms", "takes no unit"),
        ("output_tok_s=5%", "only error_rate"),
        ("ttft_p99=-1ms", "finite number >= 0"),
        ("", "at least one threshold"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_slo(text)


def test_check_reports_each_figure():
    summary = summary_of([0.1, 0.2, 0.3, 1.0])
    verdict = check_slo(parse_slo("ttft_p50=300ms,ttft_max=500ms,output_tok_s=5"), summary)
    assert [c.is_met for c in verdict.checks] == [True, False, True, True]
    assert not verdict.is_met
    (failure,) = verdict.failures
    assert failure.line() == "FAIL ttft_max = 1000.0 ms > 500.0 ms"
    assert verdict.lines()[0] == "ok   ttft_p50 = 250.0 ms <= 300.0 ms"
    errors = check_slo(parse_slo("ttft_p50=10s"), summary_of([0.1], num_errors=2))
    assert [c.line() for c in errors.failures] == ["FAIL errors = 2 > 0"]


def test_nothing_measured_misses_the_slo():
    verdict = check_slo(parse_slo("ttft_p99=10s,errors=5"), summary_of([], num_errors=3))
    ttft = verdict.checks[0]
    assert math.isnan(ttft.value) and not ttft.is_met and "nothing measured" in ttft.line()


async def run_cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def test_run_exit_status_follows_the_slo(load_server, capsys):
    common = ["run", "--url", load_server.url, "--prompts", "chat", "--num-requests", "6",
              "--concurrency", "3", "--max-tokens", "4", "--ignore-eos", "--warmup", "1",
              "--no-progress"]  # fmt: skip
    assert await run_cli(*common, "--slo", "ttft_p99=60s,itl_p99=60s,errors=0") == 0
    met = capsys.readouterr().out
    assert "SLO ttft_p99=60s,itl_p99=60s,errors=0 for sse: met" in met
    assert "ok   ttft_p99 = " in met and "<= 60000.0 ms" in met

    assert await run_cli(*common, "--slo", "ttft_p99=0.001ms,itl_p99=60s") == 1
    missed = capsys.readouterr().out
    assert "for sse: MISSED" in missed
    assert "FAIL ttft_p99 = " in missed and "> 0.0 ms" in missed  # the failing figure, printed
    assert "ok   itl_p99" in missed and "ok   errors = 0 <= 0" in missed
