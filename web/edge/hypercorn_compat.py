"""The hypercorn internals the edge builds on, and a check that they are still there.

hypercorn offers no supported way to choose the class that serves a connection (its trio worker
names `TCPServer` directly) and none for a write deadline, per-request read deadlines or error
bodies, so the edge serves sockets itself (listener.py, connection.py) and reuses hypercorn's
protocol layer below that: `H11Protocol` (subclassed: four hooks), its HTTP and WebSocket
streams, `TaskGroup`, `WorkerContext` and `Lifespan`. Those are internals; pyproject.toml pins
the hypercorn release they were read from (HYPERCORN_VERSION), `serve` logs a warning when the
check below finds a difference, and tests/web/test_edge_hypercorn_pin.py fails on one.
"""

from __future__ import annotations

import importlib.metadata
import inspect

from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext

HYPERCORN_VERSION = "0.18.0"

# Each hook EdgeH11Protocol overrides, with the parameters hypercorn calls it with.
_H11_HOOKS = {
    "handle": ["self", "event"],
    "stream_send": ["self", "event"],
    "_check_protocol": ["self", "event"],
    "_send_error_response": ["self", "status_code"],
}
_H11_INIT = [
    "self", "app", "config", "context", "task_group", "connection_state", "ssl", "client",
    "server", "send",
]  # fmt: skip


def hypercorn_problems() -> list[str]:
    """What no longer matches the hypercorn the edge was written for (empty: all fits)."""
    problems = []
    installed = importlib.metadata.version("hypercorn")
    if installed != HYPERCORN_VERSION:
        problems.append(f"hypercorn {installed} is installed; the edge fits {HYPERCORN_VERSION}")
    if _parameters(H11Protocol.__init__) != _H11_INIT:
        problems.append("H11Protocol.__init__ takes different arguments")
    for name, parameters in _H11_HOOKS.items():
        method = getattr(H11Protocol, name, None)
        if method is None or _parameters(method) != parameters:
            problems.append(f"H11Protocol.{name} is gone or takes different arguments")
    # The hooks must still be on the request path: _handle_events checks each request head
    # with _check_protocol and answers h11's parse errors with _send_error_response.
    handle_events = inspect.getsource(H11Protocol._handle_events)
    for hook in ("_check_protocol(event)", "_send_error_response(error.error_status_hint)"):
        if hook not in handle_events:
            problems.append(f"H11Protocol._handle_events no longer calls {hook}")
    if "h11_connection" not in inspect.getsource(H11WSConnection.__init__):
        problems.append("H11WSConnection no longer keeps the h11 connection as h11_connection")
    if not all(callable(getattr(TaskGroup, name, None)) for name in ("spawn_app", "spawn")):
        problems.append("TaskGroup lacks spawn_app or spawn")
    if _parameters(WorkerContext.__init__) != ["self", "max_requests"]:
        problems.append("WorkerContext takes different arguments")
    if _parameters(Lifespan.__init__) != ["self", "app", "config", "state"]:
        problems.append("Lifespan takes different arguments")
    return problems


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]
