"""ServerConfig (the server's own options) and AppState (what every handler shares)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from triode.engine.async_engine import AsyncEngine
from triode.streaming.ws_limits import WebSocketLimits


@dataclass
class ServerConfig:
    """Options of the HTTP/WebSocket front end; the engine has its own EngineConfig."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Clients must send `Authorization: Bearer <key>` (WebSocket: also ?api_key= or the
    # `bearer.<key>` subprotocol). None: no key needed.
    api_key: str | None = None
    # Browser origins allowed to call the API (CORS) and open WebSockets. Same-origin and
    # localhost origins are always allowed; "*" allows every origin.
    allowed_origins: list[str] = field(default_factory=list)
    # Idle sockets cost little (a few KiB each); chat frontends and load tests open thousands.
    max_ws_connections: int = 4096
    max_ws_generations_per_socket: int = 32
    max_ws_generations: int = 0  # across all sockets; 0: only the engine's queue limit
    # On SIGINT/SIGTERM: stop accepting, give in-flight requests this long, then end them.
    shutdown_timeout_s: float = 30.0
    # A client that accepts no data for this long is disconnected (and its request aborted).
    send_timeout_s: float = 30.0
    max_request_bytes: int = 16 * 1024 * 1024
    keep_alive_timeout_s: float = 5.0
    backlog: int = 2048
    access_log: bool = False
    log_level: str = "info"


@dataclass
class AppState:
    """Shared by every handler: the engine, the options, the limits and the shutdown flag."""

    engine: AsyncEngine
    config: ServerConfig
    ws_limits: WebSocketLimits
    draining: trio.Event = field(default_factory=trio.Event)
    engine_error: str | None = None  # the engine task failed (to load, or later)
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(cls, engine: AsyncEngine, config: ServerConfig) -> AppState:
        limits = WebSocketLimits(
            max_connections=config.max_ws_connections,
            max_generations_per_socket=config.max_ws_generations_per_socket,
            max_generations=config.max_ws_generations,
        )
        return cls(engine, config, limits)

    @property
    def is_draining(self) -> bool:
        return self.draining.is_set()
