"""Both transports against a real triode server (tiny model): completions, error kinds, modes."""

from __future__ import annotations

import pytest
import trio

from triode.load_tests.runner import RunConfig, run_workload
from triode.load_tests.server_metrics import wait_until_idle
from triode.load_tests.servers import discover_model, free_port
from triode.load_tests.transports import open_transports
from triode.load_tests.workload import SamplingOptions, TokenRange, build_specs

pytestmark = pytest.mark.timeout(120)

MAX_TOKENS = 8
FIXED = TokenRange(MAX_TOKENS, MAX_TOKENS)


def specs(n: int, endpoint: str = "chat", max_tokens: TokenRange = FIXED):
    return build_specs(n, endpoint=endpoint, prompt_set="chat", max_tokens=max_tokens, seed=n)


def quiet(**kwargs) -> RunConfig:
    return RunConfig(show_progress=False, **kwargs)


async def run(url, kinds, workload, config, model="tiny", **options):
    sampling = SamplingOptions(model=model, ignore_eos=True)
    async with open_transports(kinds, url, sampling, **options) as transports:
        return await run_workload(transports, workload, config)


@pytest.mark.parametrize("transport", ["sse", "ws"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_closed_loop_completes_with_usage(load_server, transport, endpoint):
    result = await run(load_server.url, [transport], specs(12, endpoint), quiet(concurrency=4))
    s = result.summary
    assert (s.num_ok, s.num_errors) == (12, 0), s.errors_by_kind
    assert s.output_tokens == 12 * MAX_TOKENS and s.is_usage_reported
    assert s.ttft.count == 12 and s.e2e.p50 >= s.ttft.p50 > 0
    assert s.output_tokens_per_s > 0 and s.requests_per_s > 0
    for record in result.records:
        assert record.transport == transport and record.prompt_tokens > 0
        assert (
            record.chunk_times == sorted(record.chunk_times)
            and record.e2e >= record.chunk_times[-1]
        )


async def test_open_loop_and_drawn_max_tokens(load_server):
    workload = specs(10, max_tokens=TokenRange(2, 12))
    result = await run(load_server.url, ["sse", "ws"], workload, quiet(mode="open", rate=20.0))
    assert result.summary.num_ok == 10
    by_index = {r.index: r for r in result.records}
    for spec in workload:
        assert by_index[spec.index].output_tokens == spec.max_tokens
    starts = sorted(r.start for r in result.records)
    assert starts[-1] > 0.1  # arrivals are spread out, not all at once
    assert {r.transport for r in result.records} == {"sse", "ws"}


async def test_several_generations_per_socket(load_server):
    async with open_transports(
        ["ws"], load_server.url, SamplingOptions("tiny", ignore_eos=True), generations_per_socket=4
    ) as [ws]:
        result = await run_workload([ws], specs(16), quiet(concurrency=8))
        assert ws.num_opened == 2  # 8 clients, 4 generations per socket
    assert result.summary.num_ok == 16 and result.summary.num_errors == 0


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_error_kinds(load_server, transport):
    unknown_model = await run(load_server.url, [transport], specs(2), quiet(), model="nope")
    expected = "http_404" if transport == "sse" else "rejected"
    assert unknown_model.summary.errors_by_kind == {expected: 2}
    assert "nope" in unknown_model.records[0].error_detail

    closed_port = f"http://127.0.0.1:{free_port()}"
    refused = await run(closed_port, [transport], specs(2), quiet())
    assert refused.summary.errors_by_kind == {"connect": 2}

    slow = await run(
        load_server.url,
        [transport],
        specs(2, max_tokens=TokenRange(400, 400)),
        quiet(request_timeout_s=0.3),
    )
    assert slow.summary.errors_by_kind == {"timeout": 2}
    # A client that gives up must not leave its request running on the server.
    check = await wait_until_idle(load_server.url, grace_s=10)
    assert check.is_clean, check.describe()


async def test_websocket_connection_limit_is_an_http_error(tiny_folder):
    from tests.web.conftest import running_server, tiny_engine_config
    from triode.web.state import ServerConfig

    config = ServerConfig(port=0, max_ws_connections=2)
    server_gen = running_server(tiny_engine_config(tiny_folder, num_kv_blocks=64), config)
    server = await trio.to_thread.run_sync(next, server_gen)
    try:
        result = await run(server.url, ["ws"], specs(6), quiet(concurrency=6))
        kinds = result.summary.errors_by_kind
        assert result.summary.num_ok >= 2 and kinds == {"http_503": 6 - result.summary.num_ok}
        assert await discover_model(server.url) == "tiny"
    finally:
        await trio.to_thread.run_sync(lambda: next(server_gen, None))
