"""Real servers on 127.0.0.1 for the web tests.

pytest-trio runs each test in its own `trio.run`, so a server shared by a module runs in a
thread with its own trio loop (`ServerThread`); tests talk to it over real sockets only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from triode.engine.config import EngineConfig
from triode.web.server import RunningServer, serve
from triode.web.state import ServerConfig

START_TIMEOUT_S = 180.0


class ServerThread:
    """`serve()` in a background thread; `start()` returns once the model is loaded."""

    def __init__(self, engine_config: EngineConfig, server_config: ServerConfig) -> None:
        self.engine_config = engine_config
        self.server_config = server_config
        self.server: RunningServer | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.server = await nursery.start(
                    serve, self.engine_config, self.server_config, self._stop.wait
                )
                self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def start(self, probe_health: bool = False) -> RunningServer:
        """Start and wait until ready; `probe_health` polls /health meanwhile (it needs a fixed
        port) and keeps the answers in `health_while_starting`."""
        self.health_while_starting: list[tuple[int, Any]] = []
        self._thread.start()
        url = f"http://{self.server_config.host}:{self.server_config.port}/health"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready.wait(0.05 if probe_health else START_TIMEOUT_S):
            if time.monotonic() > deadline:
                break
            try:
                response = httpx.get(url, timeout=1)
            except httpx.TransportError:  # not bound yet
                continue
            self.health_while_starting.append((response.status_code, response.json()))
        if self.server is None:
            raise RuntimeError(f"the test server did not start: {self.error!r}")
        return self.server

    def stop(self, timeout_s: float = 60.0) -> None:
        """Trigger the graceful shutdown and wait for the thread to end."""
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("the test server did not shut down")

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()


def tiny_engine_config(tiny_folder: Any, **overrides: Any) -> EngineConfig:
    """The tiny random-weight Llama: fast steps, a small KV pool so usage is visible. The
    engine core runs in the server's process (a child process per test costs a second or
    two of start-up; the shared servers below run it in a child, as `triode serve` does)."""
    options: dict[str, Any] = {
        "model": str(tiny_folder),
        "served_model_name": "tiny",
        "num_kv_blocks": 1024,
        "max_num_seqs": 256,
        "num_threads": 1,
        "engine_process": False,
    }
    options.update(overrides)
    return EngineConfig(**options)


def running_server(engine_config: EngineConfig, server_config: ServerConfig) -> Iterator[Any]:
    thread = ServerThread(engine_config, server_config)
    server = thread.start()
    try:
        yield server
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def tiny_server(tiny_folder) -> Iterator[RunningServer]:
    """One tiny-model server shared by the tests that leave its configuration alone."""
    server_config = ServerConfig(port=0, max_ws_connections=256, shutdown_timeout_s=5.0)
    engine_config = tiny_engine_config(tiny_folder, engine_process=True)
    yield from running_server(engine_config, server_config)


# The API keys of `keyed_server`: a resumable stream belongs to the key that started it.
KEYED_SERVER_KEYS = ("sk-alice", "sk-bob")


@pytest.fixture(scope="session")
def keyed_server(tiny_folder) -> Iterator[RunningServer]:
    """A tiny-model server with two API keys, shared by the resumable-stream and AI SDK tests."""
    server_config = ServerConfig(port=0, api_key=list(KEYED_SERVER_KEYS), shutdown_timeout_s=2.0)
    yield from running_server(tiny_engine_config(tiny_folder, max_num_seqs=8), server_config)


@pytest.fixture(scope="session")
def smol_thread() -> Iterator[ServerThread]:
    """The real SmolLM2-135M-Instruct, for tests where the text must mean something; /health
    is polled while it loads (the answers are in `health_while_starting`)."""
    engine_config = EngineConfig(num_kv_blocks=512, max_num_seqs=16, num_threads=2)
    thread = ServerThread(engine_config, ServerConfig(port=free_port(), shutdown_timeout_s=5.0))
    thread.start(probe_health=True)
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def smol_server(smol_thread) -> RunningServer:
    assert smol_thread.server is not None
    return smol_thread.server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
