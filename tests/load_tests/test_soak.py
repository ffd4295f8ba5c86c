"""A small soak against a real server: disconnects and slow readers leave nothing behind."""

from __future__ import annotations

import pytest
import trio

from triode.load_tests.runner import RunConfig, run_workload
from triode.load_tests.server_metrics import metric_values, scrape, wait_until_idle
from triode.load_tests.soak import SoakConfig, assign_behaviours, run_soak
from triode.load_tests.transports import open_transports
from triode.load_tests.workload import SamplingOptions, TokenRange, build_specs

pytestmark = pytest.mark.timeout(120)


async def test_small_soak_has_no_leaks(load_server):
    config = SoakConfig(
        url=load_server.url,
        model="tiny",
        num_waves=2,
        wave_size=25,
        wave_interval_s=0.5,
        disconnect_fraction=0.3,
        early_disconnect_fraction=0.1,
        slow_fraction=0.3,
        slow_pause_s=1.0,
        max_tokens=TokenRange(16, 64),
        grace_s=10.0,
        show_progress=False,
    )
    result = await run_soak(config)
    summary = result.run.summary
    assert summary.num_requests == 50 and summary.num_errors == 0, summary.errors_by_kind
    assert result.behaviours["disconnect"] >= 5 and result.behaviours["slow"] >= 5
    assert summary.num_abandoned >= result.behaviours["disconnect"]
    assert summary.num_ok + summary.num_abandoned == 50
    assert result.leaks.is_clean, result.leaks.describe()
    assert result.leaks.values["triode:kv_cache_usage_perc"] == 0
    # Slow readers still got every token (the server coalesced them, it did not drop them).
    slow_ok = [r for r in result.run.records if r.is_ok]
    assert all(r.output_tokens >= 16 for r in slow_ok)


def test_behaviours_are_seeded_and_proportional():
    specs = build_specs(2000, prompt_set="chat", max_tokens=TokenRange(4, 32))
    config = SoakConfig(url="", model="m", disconnect_fraction=0.2, slow_fraction=0.3)
    chosen, counts = assign_behaviours(specs, config)
    assert (chosen, counts) == assign_behaviours(specs, config)
    assert sum(counts.values()) == 2000
    assert counts["disconnect"] == pytest.approx(400, abs=60)
    assert counts["slow"] == pytest.approx(600, abs=70)
    for spec in specs:
        after = chosen[spec.index].disconnect_after
        assert after is None or 1 <= after <= spec.max_tokens


async def test_leak_check_sees_a_request_in_flight(load_server):
    """The soak's verdict means something only if a request still running reads as a leak."""
    [spec] = build_specs(1, prompt_set="chat", max_tokens=TokenRange(900, 900))
    options = SamplingOptions("tiny", ignore_eos=True)
    async with (
        open_transports(["ws"], load_server.url, options) as transports,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(run_workload, transports, [spec], RunConfig(show_progress=False))
        with trio.fail_after(10):
            while not metric_values(await scrape(load_server.url)).get(
                "triode:num_requests_running"
            ):
                await trio.sleep(0.01)
        busy = await wait_until_idle(load_server.url, grace_s=0.2)
        assert not busy.is_clean and busy.describe().startswith("LEAK")
        assert busy.values["triode:kv_cache_usage_perc"] > 0
        nursery.cancel_scope.cancel()  # the client leaves: the server must let go
    idle = await wait_until_idle(load_server.url, grace_s=10)
    assert idle.is_clean, idle.describe()
