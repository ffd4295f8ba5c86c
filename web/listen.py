"""The listening socket, bound before anything else starts.

`triode serve` binds it right after parsing its flags, before the heavy imports and long before
the model loads, so a busy port is reported at once, in one line naming the address. hypercorn
then serves the already-bound socket (its `fd://` bind). This module imports only the
standard library, so the command line can use it cheaply.
"""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The server cannot listen where it was told to; the message says where and why."""


def open_listen_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket for host:port; raises ListenError."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(_explain(where, port, exc)) from None
    return sock


def _explain(where: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: port {port} is already in use (another server may be "
            "running there; stop it or choose another --port)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: this machine has no such address (check --host)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
