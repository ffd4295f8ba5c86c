"""Shutdown with issue 11's WebSocket client that never reads but keeps sending (32 generations
with top_logprobs 20, then 40 invalid frames, 4 KiB receive buffer; the send timeout itself is
tested in test_edge_timeouts_and_hosts.py).

Before the edge, the send-timeout path waited forever (shielded) in the connection's close, and
SIGTERM and then SIGINT no longer stopped the server.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import trio

from tests.web.conftest import ServerThread, tiny_engine_config
from tests.web.raw_client import stall_websocket
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(120)


async def _read_log_until(process: trio.Process, log: bytearray, pattern: bytes) -> re.Match:
    with trio.fail_after(120):
        while not (match := re.search(pattern, log)):
            chunk = await process.stderr.receive_some()
            assert chunk, log.decode()
            log.extend(chunk)
    return match


async def test_a_graceful_stop_is_not_held_up_by_a_stalled_websocket(tiny_folder):
    """What SIGTERM does (the first signal sets the same trigger): the write never times out
    here, yet the server stops within the shutdown timeout plus the flush grace."""
    shutdown_timeout_s = 1.0
    thread = ServerThread(
        tiny_engine_config(tiny_folder, num_kv_blocks=2048),
        ServerConfig(port=0, send_timeout_s=3600, shutdown_timeout_s=shutdown_timeout_s),
    )
    server = thread.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        stream, _ = await stall_websocket(server.url, client)
    start = time.monotonic()
    await trio.to_thread.run_sync(thread.stop)
    took = time.monotonic() - start
    print(f"graceful stop with a stalled WebSocket took {took:.2f} s")
    assert took < shutdown_timeout_s + 2.0 + 2.0  # + the flush grace + slack
    await stream.aclose()


async def test_a_second_signal_stops_at_once_despite_a_stalled_websocket(tiny_folder):
    command = [
        sys.executable, "-m", "triode.web.cli", "serve", "--port", "0", "--model", str(tiny_folder),
        "--served-model-name", "tiny", "--num-kv-blocks", "2048", "--num-threads", "1",
        "--send-timeout-s", "3600", "--shutdown-timeout-s", "30",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    log = bytearray()
    try:
        match = await _read_log_until(process, log, rb"serving tiny on (http://[\d.:]+)")
        url = match.group(1).decode()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            stream, _ = await stall_websocket(url, client)
        process.send_signal(signal.SIGTERM)
        await _read_log_until(process, log, rb"received SIGTERM")
        start = time.monotonic()
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await process.wait() == 130, log.decode()
        took = time.monotonic() - start
        print(f"stopped {took:.2f} s after the second signal")
        assert took < 10.0  # "at once": the graceful path would take 30 s
        await stream.aclose()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
