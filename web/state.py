"""ServerConfig (the server's own options) and AppState (what every handler shares).

Each field's docstring is also its `triode serve --help` text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from triode.streaming.ws_limits import WebSocketLimits

if TYPE_CHECKING:  # the command line imports ServerConfig before anything heavy
    from triode.engine import AsyncEngine

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


@dataclass
class ServerConfig:
    """The HTTP/WebSocket front end."""

    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 serves this machine only, 0.0.0.0 every interface."""
    port: int = 8000
    """TCP port to listen on (0 picks a free one)."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every API route (WebSockets may also send
    ?api_key=KEY or the subprotocol bearer.KEY). Unset: no key needed."""
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
    stats_log_interval_s: float = 10.0
    """While busy, log a one-line summary (throughput, running, waiting, KV-cache use,
    prefix-cache hit rate) this often; 0 turns it off."""

    def __post_init__(self) -> None:
        # Comma lists are split, so `--allowed-origins a,b` and `--allowed-origins a b` agree.
        self.allowed_origins = _split_commas(self.allowed_origins)
        self.allowed_hosts = _split_commas(self.allowed_hosts)


def _split_commas(entries: list[str]) -> list[str]:
    return [item.strip() for entry in entries for item in entry.split(",") if item.strip()]


@dataclass
class AppState:
    """Shared by every handler: the engine actor (its `state` says whether it serves, drains
    or failed), the options and the WebSocket limits."""

    engine: AsyncEngine
    config: ServerConfig
    ws_limits: WebSocketLimits
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(cls, engine: AsyncEngine, config: ServerConfig) -> AppState:
        limits = WebSocketLimits(
            max_connections=config.max_ws_connections,
            max_generations_per_socket=config.max_ws_generations_per_socket,
            max_generations=config.max_ws_generations,
        )
        return cls(engine, config, limits)
