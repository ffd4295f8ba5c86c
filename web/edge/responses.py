"""The responses the edge sends by itself, before (or instead of) the application: every one an
OpenAI-shaped JSON error on a connection that closes after it.

They are written as raw bytes rather than through h11's state machine: the edge answers in
states where h11 cannot (a request head that never finished arriving has no h11 request to
respond to), and the connection ends right after, so no later exchange depends on h11's view.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

MAX_MESSAGE_CHARS = 300
# What each status means to a client, when the HTTP layer has no better words.
_DEFAULT_MESSAGES = {
    400: "malformed HTTP request",
    404: "not found",
    408: "the request was not received in time",
    431: "the request head (request line and headers) is too large",
    500: "internal server error",
    501: "not implemented",
    505: "HTTP version not supported: this server speaks HTTP/1.0 and HTTP/1.1",
}


def error_object(status: int, message: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object for a status the HTTP layer produced."""
    if message is not None and len(message) > MAX_MESSAGE_CHARS:  # h11 quotes the bad bytes
        message = message[:MAX_MESSAGE_CHARS] + "..."
    kind = "server_error" if status >= 500 and status not in (501, 505) else "invalid_request_error"
    return {
        "message": message or _DEFAULT_MESSAGES.get(status) or _reason(status).lower(),
        "type": kind,
        "param": None,
        "code": code or _reason(status).lower().replace(" ", "_").replace("-", "_"),
    }


def error_response_bytes(
    status: int,
    message: str | None = None,
    code: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body and `connection: close`."""
    body = orjson.dumps({"error": error_object(status, message, code)})
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}".encode("ascii"),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode("ascii"),
        b"connection: close",
    ]
    lines += [name + b": " + value for name, value in extra_headers or []]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
