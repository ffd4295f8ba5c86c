"""A write timeout for hypercorn's trio worker, so a client that stops reading cannot pin a
connection (and a graceful shutdown) forever.

hypercorn writes each chunk with a shielded `send_all`: a peer that keeps its socket open but
never reads blocks that write, uncancellably, once the kernel buffers fill. The engine does not
care (the request's deltas coalesce), but the connection's tasks can then never finish, and a
graceful shutdown waits for them indefinitely. `TimedSendTCPServer` bounds each write: a chunk
not accepted by the kernel within `send_timeout_s` closes the connection, which quart-trio sees
as a disconnect (the request is aborted as for any client that leaves). At the end of a graceful
shutdown, `abandon_stalled_sends` gives up on every write still waiting.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

logger = logging.getLogger(__name__)

DEFAULT_SEND_TIMEOUT_S = 30.0

# The writes in progress, per trio run (tests run several servers, each in its own run).
_PENDING_SENDS: trio.lowlevel.RunVar[set[trio.CancelScope]] = trio.lowlevel.RunVar("pending_sends")


def _pending_sends() -> set[trio.CancelScope]:
    try:
        return _PENDING_SENDS.get()
    except LookupError:
        pending: set[trio.CancelScope] = set()
        _PENDING_SENDS.set(pending)
        return pending


def abandon_stalled_sends() -> None:
    """Give up on every write of this trio run that is still waiting for its peer."""
    for scope in list(_pending_sends()):
        scope.cancel()


class TimedSendTCPServer(TCPServer):
    """hypercorn's connection, with a deadline on each write (`config.send_timeout_s`)."""

    async def protocol_send(self, event: Any) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        is_sent = False
        async with self.send_lock:
            # Shielded as hypercorn does (a half-written chunk would corrupt the stream), but
            # with a deadline of its own.
            pending = _pending_sends()
            with trio.CancelScope(shield=True), trio.move_on_after(self._send_timeout_s) as scope:
                pending.add(scope)
                try:
                    await self.stream.send_all(event.data)
                    is_sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    pending.discard(scope)
        if not is_sent:
            logger.debug("dropping a connection whose peer stopped reading or went away")
            with trio.CancelScope(shield=True):
                await self.protocol.handle(Closed())
                await self.stream.aclose()  # wakes the reader, so the connection ends

    @property
    def _send_timeout_s(self) -> float:
        return getattr(self.config, "send_timeout_s", DEFAULT_SEND_TIMEOUT_S)


def install_send_timeout() -> None:
    """Make hypercorn's trio worker use TimedSendTCPServer (process-wide; the timeout itself is
    read from each server's hypercorn Config as `send_timeout_s`)."""
    # NOTE: worker_serve looks `TCPServer` up in its module at call time; this is the only hook.
    if getattr(hypercorn_run, "TCPServer", None) not in (TCPServer, TimedSendTCPServer):
        logger.warning("unknown hypercorn layout: no write timeout for stalled clients")
        return
    hypercorn_run.TCPServer = TimedSendTCPServer  # type: ignore[misc]
