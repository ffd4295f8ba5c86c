"""Servers as subprocesses on 127.0.0.1: start, wait for /health, find the model name, stop.

    async with running_server(ServerCommand("triode", [...], port)) as url:
        ...

Output goes to a log file (one per server) so a failed start can be diagnosed; stopping sends
SIGTERM (graceful), then SIGKILL if the server is still there after a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

logger = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.5
_STOP_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ServerCommand:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def triode_command(port: int, *extra: str) -> ServerCommand:
    """`triode serve` with this interpreter, on `port`."""
    argv = [sys.executable, "-m", "triode.web.cli", "serve", "--port", str(port), *extra]
    return ServerCommand("triode", argv, port, {"HF_HUB_OFFLINE": "1"})


async def wait_healthy(url: str, process: trio.Process, timeout_s: float) -> None:
    """Poll GET /health until 200; fail if the process exits or time runs out."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        with trio.move_on_after(timeout_s):
            while process.poll() is None:
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await trio.sleep(_HEALTH_POLL_S)  # NOTE: a child process offers nothing to wait on
            raise ServerStartError(f"the server exited with code {process.returncode}")
    raise ServerStartError(f"{url}/health did not answer 200 within {timeout_s:.0f} s")


async def discover_model(url: str, api_key: str | None = None) -> str:
    """The first model id of GET /v1/models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]


@asynccontextmanager
async def running_server(
    command: ServerCommand, log_dir: Path, ready_timeout_s: float = 600.0
) -> AsyncIterator[str]:
    """Start the server, yield its URL once healthy, stop it when the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{command.name}.log"
    logger.info("starting %s: %s (log: %s)", command.name, " ".join(command.argv), log_path)
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            command.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **command.env},
        )
        try:
            try:
                await wait_healthy(command.url, process, ready_timeout_s)
            except ServerStartError as exc:
                raise ServerStartError(f"{command.name}: {exc} (see {log_path})") from None
            yield command.url
        finally:
            with trio.CancelScope(shield=True):
                await stop_process(process)


async def stop_process(process: trio.Process, timeout_s: float = _STOP_TIMEOUT_S) -> None:
    if process.poll() is not None:
        return
    # SIGTERM, not SIGINT: a child of a background job inherits SIGINT ignored.
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(timeout_s):
        await process.wait()
        return
    process.kill()
    await process.wait()
