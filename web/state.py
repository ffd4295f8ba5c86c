"""ServerConfig (the server's own options) and AppState (what every handler shares).

Each field's docstring is also its `triode serve --help` text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from triode.streaming.ws_limits import WebSocketLimits

if TYPE_CHECKING:  # the command line imports ServerConfig before anything heavy (trio too)
    from triode.engine import AsyncEngine
    from triode.streaming.stream_store import StreamStore
    from triode.web.response_store import ResponseStore

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
ToolCallParserName = Literal["auto", "hermes", "llama3_json"]


@dataclass
class ServerConfig:
    """The HTTP/WebSocket front end."""

    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 serves this machine only, 0.0.0.0 every interface."""
    port: int = 8000
    """TCP port to listen on (0 picks a free one)."""
    api_key: list[str] = field(default_factory=list)
    """Require `Authorization: Bearer KEY` on every API route (WebSockets may also send
    ?api_key=KEY or the subprotocol bearer.KEY). Several keys may be given; a resumable stream
    or a stored response belongs to the key that made it. Unset: no key needed."""
    allowed_origins: list[str] = field(default_factory=list)
    """Browser origins (e.g. https://chat.example.com) allowed to call the API and open
    WebSockets, besides same-origin pages and localhost; `*` allows every origin. Several may
    be given, separated by spaces or commas."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names the server answers besides loopback ones (DNS-rebinding defence). Bound to
    loopback (the default), requests for any other Host get 403; bound elsewhere (0.0.0.0),
    the check is off unless names are given. `.example.com` also allows its subdomains; `*`
    turns the check off. Several may be given, separated by spaces or commas."""
    max_ws_connections: int = 4096
    """Open WebSockets at most; more are refused with 503. Idle sockets cost a few KiB each."""
    max_ws_generations_per_socket: int = 32
    """Concurrent generations on one WebSocket."""
    max_ws_generations: int = 0
    """Concurrent WebSocket generations over all sockets (0: only the engine's queue limits)."""
    shutdown_timeout_s: float = 30.0
    """On SIGINT/SIGTERM: stop accepting, give in-flight requests this many seconds, then end
    them."""
    send_timeout_s: float = 30.0
    """A client that accepts no data for this many seconds is disconnected (its requests are
    aborted), also a WebSocket whose client keeps sending while it never reads."""
    header_timeout_s: float = 10.0
    """A request head (request line and headers) must arrive within this many seconds of its
    first byte, however slowly it is dribbled; a late one gets 408 and the connection closes."""
    body_timeout_s: float = 60.0
    """A request body must arrive within this many seconds of its head; a late one gets 408
    and the connection closes."""
    max_request_bytes: int = 16 * 1024 * 1024
    """Largest request body or WebSocket message; larger ones get 413 (WebSocket: close 1009)."""
    keep_alive_timeout_s: float = 5.0
    """A connection that sends nothing (no first request yet, or idle between requests) is
    closed after this many seconds."""
    backlog: int = 2048
    """Connections the kernel queues before the server accepts them."""
    access_log: bool = False
    """Log one line per HTTP request."""
    log_level: LogLevel = "info"
    """Logging level; `debug` also prints tracebacks of start-up failures."""
    tool_call_parser: ToolCallParserName = "auto"
    """How the model writes tool calls, to turn its text into `tool_calls`: `hermes`
    (<tool_call>{...}</tool_call>: Qwen, Hermes, SmolLM), `llama3_json` (Llama 3.1+), or `auto`
    (from the chat template)."""
    resume_window_s: float = 0.0
    """Make streams resumable by default: when its client goes away, a generation keeps running
    this many seconds, its chunks buffered, waiting for a resume (GET /v1/streams/{id}, or a
    WebSocket `resume`). 0: a disconnect aborts, as without resumable streams, except for
    requests that ask with "resumable": true (their window: their own resume_window_s, or 30 s)."""
    max_resume_window_s: float = 600.0
    """The longest window a request may ask for; 0 turns resumable streams off."""
    resume_buffer_mib: float = 256.0
    """Memory for the chunks of all resumable streams together; past it, the oldest stream is
    stopped and its buffer dropped (finished or unread streams first)."""
    resume_stream_buffer_mib: float = 8.0
    """Memory for one resumable stream's chunks; a generation that would pass it is stopped."""
    max_stored_responses: int = 10_000
    """Responses API: how many responses (`"store": true`) are kept for GET and
    previous_response_id; past it, the least recently used go first."""
    response_store_mib: float = 256.0
    """Responses API: memory for stored responses and their conversations."""
    response_store_ttl_s: float = 3600.0
    """Responses API: a stored response is forgotten this long after it was stored."""
    stats_log_interval_s: float = 10.0
    """While busy, log a one-line summary (throughput, running, waiting, KV-cache use,
    prefix-cache hit rate) this often; 0 turns it off."""

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # ServerConfig(api_key="k") means one key
            self.api_key = [self.api_key]
        self.api_key = [k for k in (self.api_key or []) if k]
        # Comma lists are split, so `--allowed-origins a,b` and `--allowed-origins a b` agree.
        self.allowed_origins = _split_commas(self.allowed_origins)
        self.allowed_hosts = _split_commas(self.allowed_hosts)


def _split_commas(entries: list[str]) -> list[str]:
    return [item.strip() for entry in entries for item in entry.split(",") if item.strip()]


@dataclass
class AppState:
    """Shared by every handler: the engine actor (its `state` says whether it serves, drains
    or failed), the options, the WebSocket limits and the resumable streams."""

    engine: AsyncEngine
    config: ServerConfig
    ws_limits: WebSocketLimits
    streams: StreamStore  # resumable streams; its `run` task is started by serve()
    responses: ResponseStore  # the Responses API's stored responses
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(cls, engine: AsyncEngine, config: ServerConfig) -> AppState:
        from triode.streaming.stream_store import StreamStore
        from triode.web.response_store import ResponseStore

        limits = WebSocketLimits(
            max_connections=config.max_ws_connections,
            max_generations_per_socket=config.max_ws_generations_per_socket,
            max_generations=config.max_ws_generations,
        )
        streams = StreamStore(
            max_total_bytes=int(config.resume_buffer_mib * 2**20),
            max_stream_bytes=int(config.resume_stream_buffer_mib * 2**20),
        )
        responses = ResponseStore(
            max_responses=config.max_stored_responses,
            max_bytes=int(config.response_store_mib * 2**20),
            ttl_s=config.response_store_ttl_s,
        )
        return cls(engine, config, limits, streams, responses)
