"""EdgeLimits: the timeouts one connection lives under (from ServerConfig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Timeouts at the edge, in seconds; `inf` turns one off."""

    # A new or kept-alive connection that sends nothing is closed after this long.
    keep_alive_timeout_s: float = 5.0
    # A request head (request line and headers) must arrive within this long of its first byte.
    header_timeout_s: float = 10.0
    # A request body must arrive within this long of the end of its head.
    body_timeout_s: float = 60.0
    # A write the peer does not accept within this long closes the connection.
    send_timeout_s: float = 30.0
    # After a connection is closed, its tasks (the app's cleanup included) get this long to end.
    close_grace_s: float = 5.0
    # At shutdown, open connections get this long to finish before they are cut.
    graceful_timeout_s: float = 32.0
