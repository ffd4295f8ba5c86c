"""EdgeH11Protocol: hypercorn's HTTP/1.1 protocol with the edge's own framing rules and errors.

hypercorn parses HTTP/1.1 with h11 and answers what h11 rejects itself (400, 431, 501) with an
empty body. This subclass keeps its parsing and streams but changes what reaches the wire:

- HTTP/1.0 and HTTP/1.1 only: any other version gets 505 (hypercorn would switch a
  `PRI * HTTP/2.0` preface or an `Upgrade: h2c` request to cleartext HTTP/2; we serve neither,
  so `Upgrade: h2c` is ignored and the request is answered in HTTP/1.1).
- A request carrying both Content-Length and Transfer-Encoding gets 400 and the connection
  closes (RFC 9112 section 6.3: the framing is ambiguous, the classic request-smuggling vector
  behind a proxy that frames by Content-Length; h11 itself would let Transfer-Encoding win and
  keep the connection open).
- Every response the HTTP layer makes by itself carries a JSON body in OpenAI's error shape, and
  once one is sent nothing else is: the connection is ending.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import h11
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import WSStream

from triode.web.edge.responses import error_response_bytes

logger = logging.getLogger(__name__)

SUPPORTED_HTTP_VERSIONS = (b"1.0", b"1.1")
# The headers hypercorn's streams put on the empty error responses they make themselves.
_BARE_ERROR_HEADERS = {(b"content-length", b"0"), (b"connection", b"close")}


class RequestRefused(Exception):
    """Raised while a request head is checked: answer `status` and close the connection."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class EdgeH11Protocol(H11Protocol):
    """hypercorn's H11Protocol with the rules in this module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_ending = False  # an error response went out; the connection is closing

    @property
    def can_respond(self) -> bool:
        """True while no response has begun on this connection's current exchange."""
        connection = self.connection
        if isinstance(connection, H11WSConnection):  # an upgrade: answered yet?
            connection = connection.h11_connection
        return not self.is_ending and connection.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def handle(self, event: Event) -> None:
        if self.is_ending and isinstance(event, RawData):
            return  # input after an error response has no one to go to
        try:
            await super().handle(event)
        except RequestRefused as refusal:
            logger.debug("refused a request: %d %s", refusal.status, refusal.message)
            await self.refuse(refusal.status, refusal.message, refusal.code)

    async def refuse(
        self,
        status: int,
        message: str | None = None,
        code: str | None = None,
        *,
        close: bool = True,
    ) -> None:
        """Send an error response (if none has begun) and end the connection."""
        if self.can_respond:
            headers = self.config.response_headers("h11")
            await self.send(RawData(error_response_bytes(status, message, code, headers)))
        self.is_ending = True
        if close:
            await self.send(Closed())

    async def stream_send(self, event: StreamEvent) -> None:
        if self.is_ending:
            return  # the stream or app answering after an error response: nothing may follow
        if isinstance(event, Response) and _is_bare_error(event):
            await self.refuse(event.status_code, self._bare_error_message(event.status_code))
            return
        await super().stream_send(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        # NOTE: replaces hypercorn's check, whose only job is switching to cleartext HTTP/2.
        if event.http_version not in SUPPORTED_HTTP_VERSIONS:
            raise RequestRefused(
                505,
                f"HTTP/{event.http_version.decode('ascii', 'replace')} is not supported: this "
                "server speaks HTTP/1.0 and HTTP/1.1",
                "http_version_not_supported",
            )
        names = {name for name, _ in event.headers}  # h11 lower-cases header names
        if b"content-length" in names and b"transfer-encoding" in names:
            raise RequestRefused(
                400,
                "a request may not carry both Content-Length and Transfer-Encoding",
                "ambiguous_framing",
            )

    async def _send_error_response(self, status_code: int) -> None:
        # NOTE: hypercorn calls this inside its `except h11.RemoteProtocolError` block, so the
        # exception being handled is h11's own description of what was wrong.
        error = sys.exception()
        message = None
        if isinstance(error, h11.RemoteProtocolError):
            message = f"malformed HTTP request: {error}"
            if status_code == 431:
                limit = self.config.h11_max_incomplete_size
                message = f"the request head is larger than {limit} bytes"
        await self.refuse(status_code, message, close=False)  # hypercorn sends Closed() next

    def _bare_error_message(self, status: int) -> str | None:
        if isinstance(self.stream, WSStream) and status == 400:
            return "malformed WebSocket handshake (or data sent before the handshake completed)"
        return None


def _is_bare_error(event: Response) -> bool:
    """A response hypercorn's HTTP or WebSocket stream made itself (the app's carry a body)."""
    return event.status_code >= 400 and set(event.headers) == _BARE_ERROR_HEADERS
