"""Open the transports a run needs: "sse" (any OpenAI-compatible server) and/or "ws" (triode).

async with open_transports(["sse", "ws"], "http://127.0.0.1:8000", options) as transports:
    await run_workload(transports, specs, config)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from triode.load_tests.runner import Transport
from triode.load_tests.sse_client import SSETransport
from triode.load_tests.workload import SamplingOptions
from triode.load_tests.ws_client import open_ws_transport

TRANSPORTS = ("sse", "ws")
WS_PATH = "/v1/ws"


def ws_url_of(base_url: str) -> str:
    """http://host:port[/] -> ws://host:port/v1/ws (https -> wss)."""
    return "ws" + base_url.rstrip("/").removeprefix("http") + WS_PATH


@asynccontextmanager
async def open_transports(
    kinds: Sequence[str],
    base_url: str,
    options: SamplingOptions,
    *,
    api_key: str | None = None,
    max_connections: int = 1000,
    generations_per_socket: int = 1,
    reuse_connections: bool = True,
) -> AsyncIterator[list[Transport]]:
    """One transport per kind, in order, closed when the block ends."""
    async with AsyncExitStack() as stack:
        transports: list[Transport] = []
        for kind in kinds:
            if kind == "sse":
                sse = SSETransport(
                    base_url,
                    options,
                    api_key=api_key,
                    max_connections=max_connections,
                    reuse_connections=reuse_connections,
                )
                transports.append(await stack.enter_async_context(sse))
            elif kind == "ws":
                ws = open_ws_transport(
                    ws_url_of(base_url),
                    options,
                    api_key=api_key,
                    generations_per_socket=generations_per_socket,
                    reuse_sockets=reuse_connections,
                )
                transports.append(await stack.enter_async_context(ws))
            else:
                raise ValueError(f"unknown transport {kind!r}; expected one of {TRANSPORTS}")
        yield transports
