"""WebSocketLimits: the connection and generation caps shared by every WebSocket session.

Plain counters touched only from the event loop thread, so no locks: a check and the increment
beside it run without a checkpoint in between.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WebSocketLimits:
    """Caps for the WebSocket endpoint; a limit of 0 means "no limit"."""

    max_connections: int = 100
    max_generations_per_socket: int = 32
    max_generations: int = 0  # across all sockets
    num_connections: int = 0
    num_generations: int = 0

    def can_open_connection(self) -> bool:
        return not self.max_connections or self.num_connections < self.max_connections

    def open_connection(self) -> None:
        self.num_connections += 1

    def close_connection(self) -> None:
        assert self.num_connections > 0
        self.num_connections -= 1

    def can_start_generation(self) -> bool:
        return not self.max_generations or self.num_generations < self.max_generations

    def start_generation(self) -> None:
        self.num_generations += 1

    def end_generation(self) -> None:
        assert self.num_generations > 0
        self.num_generations -= 1
