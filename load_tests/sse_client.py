"""SSE transport: OpenAI streaming over HTTP/1.1 (httpx on trio), for any compatible server.

Connections are pooled and kept alive between requests, up to the run's concurrency (or, with
`reuse_connections` off, each request opens its own). A client
that abandons a stream closes its connection, which is what a server sees when a browser tab
closes; a paused reader stops reading the socket, so TCP pushes back on the server.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, SSEError

from triode.load_tests.record import (
    CONNECT,
    CONNECTION_LOST,
    MID_STREAM,
    PROTOCOL,
    TIMEOUT,
    Abandoned,
    RequestRecorder,
)
from triode.load_tests.workload import PATHS, RequestSpec, SamplingOptions

DONE_DATA = "[DONE]"  # OpenAI's end-of-stream event


class SSETransport:
    """Sends each request as a streaming POST and reads its events."""

    name = "sse"

    def __init__(
        self,
        base_url: str,
        options: SamplingOptions,
        *,
        api_key: str | None = None,
        max_connections: int = 1000,
        reuse_connections: bool = True,
        connect_timeout_s: float = 60.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections if reuse_connections else 0,
        )
        # Reads have no timeout of their own: the runner bounds each whole request.
        timeout = httpx.Timeout(None, connect=connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=base_url, headers=headers, limits=limits, timeout=timeout
        )
        self._options = options

    async def __aenter__(self) -> SSETransport:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.__aexit__(*exc_info)

    async def send(self, spec: RequestSpec, recorder: RequestRecorder) -> None:
        """Run one request to its end (or failure), feeding `recorder`."""
        body = orjson.dumps(spec.body(self._options))
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        connect_started = 0.0

        async def trace(event: str, info: dict[str, Any]) -> None:
            # httpcore reports a new connection's TCP connect; a reused one reports none.
            nonlocal connect_started
            if event == "connection.connect_tcp.started":
                connect_started = time.perf_counter()
            elif event == "connection.connect_tcp.complete":
                recorder.record.connect_s = time.perf_counter() - connect_started

        try:
            async with self._client.stream(
                "POST",
                PATHS[spec.endpoint],
                content=body,
                headers=headers,
                extensions={"trace": trace},
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    recorder.fail(f"http_{response.status_code}", text)
                    return
                await _read_events(response, recorder)
        except Abandoned:
            pass  # leaving the block closed the connection mid-stream, as intended
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            recorder.fail(CONNECT, repr(exc))
        except httpx.TimeoutException as exc:
            recorder.fail(TIMEOUT, repr(exc))
        except (httpx.TransportError, OSError) as exc:
            recorder.fail(CONNECTION_LOST, repr(exc))


async def _read_events(response: httpx.Response, recorder: RequestRecorder) -> None:
    try:
        async for sse in EventSource(response).aiter_sse():
            data = sse.data
            if data == DONE_DATA:
                recorder.finish()
                return
            try:
                event: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                recorder.fail(PROTOCOL, f"not JSON: {data[:100]!r}")
                continue
            if not isinstance(event, dict):
                recorder.fail(PROTOCOL, f"not an object: {data[:100]!r}")
            elif "error" in event:  # sent after the headers: the stream still ends in [DONE]
                recorder.fail(MID_STREAM, orjson.dumps(event["error"]).decode())
            else:
                recorder.on_usage(event.get("usage"))
                await recorder.on_chunk(event)
    except SSEError as exc:  # not an event stream at all (a proxy's page?)
        recorder.fail(PROTOCOL, str(exc))
        return
    recorder.fail(CONNECTION_LOST, "the stream ended without [DONE]")
