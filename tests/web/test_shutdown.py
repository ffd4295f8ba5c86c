"""Graceful shutdown with requests in flight: in-process, and `triode serve` under a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.web.conftest import ServerThread, tiny_engine_config
from tests.web.helpers import metric, open_raw_request, read_metrics, stream_sse, wait_for_metric
from triode.engine.config import EngineConfig
from triode.web.server import EngineLoadError, serve
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(180)


async def _ws_generation(url: str, request: dict, started: trio.Event) -> tuple[list[dict], int]:
    """Run one generation over a WebSocket until the server closes it; messages and close code."""
    messages: list[dict] = []
    async with open_websocket_url(url) as ws:
        await ws.send_message(
            orjson.dumps({"type": "completion", "id": 1, "request": request}).decode()
        )
        try:
            while True:
                messages.append(orjson.loads(await ws.get_message()))
                started.set()
        except ConnectionClosed as closed:
            return messages, closed.reason.code
    raise AssertionError("unreachable")


async def _shutdown_with_requests_in_flight(
    tiny_folder, shutdown_timeout_s: float, max_tokens: int
):
    thread = ServerThread(
        tiny_engine_config(tiny_folder, num_kv_blocks=256),
        ServerConfig(port=0, shutdown_timeout_s=shutdown_timeout_s),
    )
    server = thread.start()
    request = {"prompt": "Once", "max_tokens": max_tokens, "ignore_eos": True}
    results: dict = {}
    ws_started = trio.Event()

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

        async def sse() -> None:
            results["sse"] = await stream_sse(
                client, "/v1/completions", {**request, "stream": True}
            )

        async def ws() -> None:
            results["ws"] = await _ws_generation(server.ws_url, request, ws_started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sse)
            nursery.start_soon(ws)
            await ws_started.wait()
            await wait_for_metric(client, "", "num_requests_running", lambda v: v == 2)
            start = time.monotonic()
            await trio.to_thread.run_sync(thread.stop)
            results["stop_s"] = time.monotonic() - start
    assert not thread.is_alive and thread.error is None
    with pytest.raises(httpx.ConnectError):  # no longer listening
        async with httpx.AsyncClient() as client:
            await client.get(f"{server.url}/health")
    return results


async def test_in_flight_requests_finish_before_shutdown(tiny_folder):
    results = await _shutdown_with_requests_in_flight(tiny_folder, 30.0, max_tokens=300)
    sse = results["sse"]
    assert sse.is_done and sse.chunks[-1]["choices"][0]["finish_reason"] == "length"
    messages, close_code = results["ws"]
    assert messages[-1]["type"] == "done" and messages[-1]["usage"]["completion_tokens"] == 300
    assert close_code == 1001  # going away
    print(f"graceful stop took {results['stop_s']:.2f} s")


async def test_requests_still_running_at_the_deadline_end_with_an_error(tiny_folder):
    results = await _shutdown_with_requests_in_flight(tiny_folder, 0.2, max_tokens=1000)
    sse = results["sse"]
    assert sse.is_done  # [DONE] still closes the stream
    error = sse.chunks[-1]["error"]
    assert error["code"] == "server_shutting_down" and set(error) == {
        "message",
        "type",
        "param",
        "code",
    }
    messages, close_code = results["ws"]
    assert messages[-1]["type"] == "error" and messages[-1]["id"] == 1
    assert messages[-1]["error"]["code"] == "server_shutting_down"
    assert close_code == 1001
    assert results["stop_s"] < 10


class ServerProcess:
    """`triode serve` as a subprocess, its log collected as it is written."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = b""
        self._grew = trio.Event()

    async def collect_log(self) -> None:
        while chunk := await self.process.stderr.receive_some():
            self.log += chunk
            self._grew.set()
            self._grew = trio.Event()

    async def wait_for_log(self, pattern: bytes) -> re.Match:
        with trio.fail_after(120):
            while not (match := re.search(pattern, self.log)):
                assert self.process.returncode is None, self.log.decode()
                await self._grew.wait()
        return match


@pytest.mark.parametrize(
    ("signals", "exit_code"),
    [([signal.SIGTERM], 0), ([signal.SIGINT], 0), ([signal.SIGINT, signal.SIGINT], 130)],
    ids=["SIGTERM", "SIGINT", "SIGINT-twice"],
)
async def test_triode_serve_stops_on_signals(tiny_folder, signals, exit_code):
    """One signal: in-flight requests finish, exit 0. A second SIGINT: stop at once, exit 130."""
    command = [
        sys.executable, "-m", "triode.web.cli", "serve", "--port", "0", "--model", str(tiny_folder),
        "--served-model-name", "tiny", "--num-kv-blocks", "256", "--num-threads", "1",
    ]  # fmt: skip
    server = ServerProcess(await trio.lowlevel.open_process(command, stderr=subprocess.PIPE))
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(server.collect_log)
            url = (
                (await server.wait_for_log(rb"serving tiny on (http://[\d.:]+)")).group(1).decode()
            )
            # The start-up line also says what is served: a float checkpoint stays float.
            line = rb"serving tiny on \S+ \(weights: none, [\d.]+ MB, 32.00 bits/weight, float32 "
            await server.wait_for_log(line)
            max_tokens = 200 if exit_code == 0 else 1000
            body = {"prompt": "Once", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
            result: dict = {}
            async with (
                httpx.AsyncClient(base_url=url, timeout=60) as client,
                trio.open_nursery() as nursery,
            ):

                async def read() -> None:
                    try:
                        result["sse"] = await stream_sse(client, "/v1/completions", body)
                    except httpx.HTTPError as exc:  # a forced stop cuts the stream
                        result["error"] = exc

                nursery.start_soon(read)
                await wait_for_metric(client, "", "num_requests_running", lambda v: v == 1)
                server.process.send_signal(signals[0])
                # NOTE: two signals before the first is handled count as one (trio keeps one
                # pending signal per number), so the second waits until the first was seen.
                await server.wait_for_log(rb"received SIG")
                for signum in signals[1:]:
                    server.process.send_signal(signum)
            with trio.fail_after(60):
                assert await server.process.wait() == exit_code, server.log.decode()
        if exit_code == 0:
            sse = result["sse"]
            assert sse.is_done and sse.chunks[-1]["choices"][0]["finish_reason"] == "length"
        else:
            assert b"stopped without waiting" in server.log
    finally:
        if server.process.returncode is None:
            server.process.kill()
            await server.process.wait()


STALLING = {"prompt": "a", "max_tokens": 1000, "ignore_eos": True, "logprobs": 5, "stream": True}


async def test_a_client_that_never_reads_is_dropped_after_the_send_timeout(tiny_folder):
    thread = ServerThread(
        tiny_engine_config(tiny_folder, num_kv_blocks=256), ServerConfig(port=0, send_timeout_s=0.5)
    )
    server = thread.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            stalled = await open_raw_request(
                server.url, "/v1/completions", STALLING, receive_buffer=4096
            )
            await wait_for_metric(client, "", "num_requests_running", lambda v: v == 1)
            # The server gives up on the connection: the request is aborted, not finished.
            await wait_for_metric(
                client, "", "request_success_total", lambda v: v == 1, finished_reason="abort"
            )
            assert metric(await read_metrics(client, ""), "num_requests_running") == 0
            await stalled.aclose()
    finally:
        await trio.to_thread.run_sync(thread.stop)


async def test_a_client_that_never_reads_cannot_hold_up_the_shutdown(tiny_folder):
    thread = ServerThread(
        tiny_engine_config(tiny_folder, num_kv_blocks=256),
        ServerConfig(port=0, send_timeout_s=3600, shutdown_timeout_s=0.2),
    )
    server = thread.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        stalled = await open_raw_request(
            server.url, "/v1/completions", STALLING, receive_buffer=4096
        )
        # ~400 bytes a token: by 400 tokens the socket buffers are full and the writes blocked.
        await wait_for_metric(client, "", "generation_tokens_total", lambda v: v >= 400, 60)
    start = time.monotonic()
    await trio.to_thread.run_sync(thread.stop)
    print(f"shutdown with a stalled reader took {time.monotonic() - start:.2f} s")
    assert time.monotonic() - start < 10
    await stalled.aclose()


async def test_a_model_that_fails_to_load_stops_the_server(tmp_path):
    config = EngineConfig(model=str(tmp_path / "no-such-model"))
    with trio.fail_after(60), pytest.raises(EngineLoadError, match="ModelNotFoundError"):
        await serve(config, ServerConfig(port=0))
