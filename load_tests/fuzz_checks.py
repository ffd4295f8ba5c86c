"""What the fuzz demands of every answer: never a 5xx (a 503 for overload aside), OpenAI's error
shape on every 4xx and on every error inside a stream, and streams that end properly."""

from __future__ import annotations

from typing import Any

import orjson

ERROR_FIELDS = {"message", "type", "param", "code"}
# 503s that are the server working as designed (overload, loading, shutdown), not failures.
ALLOWED_503_CODES = {"server_overloaded", "engine_not_ready", "server_shutting_down"}
# 5xx that RFC 9112 prescribes for a client's protocol choices: an unknown Transfer-Encoding
# (501) and an HTTP version other than 1.0/1.1 (505). Refusals, not server failures.
PROTOCOL_REFUSALS = {501, 505}
# WebSocket close codes a hostile client may earn; 1011 (internal error) is a failure.
ALLOWED_CLOSE_CODES = {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009}


def error_shape_problems(obj: Any, where: str) -> list[str]:
    """Problems with an `{"error": {...}}` object (or its inner error object)."""
    error = obj.get("error") if isinstance(obj, dict) and "error" in obj else obj
    if not isinstance(error, dict) or set(error) != ERROR_FIELDS:
        return [f"{where}: not OpenAI's error shape: {str(obj)[:200]}"]
    if not isinstance(error["message"], str) or not error["message"]:
        return [f"{where}: error without a message"]
    if not isinstance(error["type"], str):
        return [f"{where}: error type is not a string"]
    if error["param"] is not None and not isinstance(error["param"], str):
        return [f"{where}: error param is neither null nor a string"]
    if error["type"] == "server_error" and error["code"] not in ALLOWED_503_CODES:
        return [f"{where}: server error: {error['message'][:200]}"]
    return []


def check_http(status: int, content_type: str, body: bytes, method: str = "POST") -> list[str]:
    """Problems with one HTTP answer."""
    if status >= 500:
        code = _error_code(body)
        is_designed = status in PROTOCOL_REFUSALS or (status == 503 and code in ALLOWED_503_CODES)
        if not is_designed:
            return [f"HTTP {status}: {body[:300]!r}"]
        if status in PROTOCOL_REFUSALS:
            return _json_error_problems(status, content_type, body)
        return []
    if method == "HEAD" or status in (101, 204, 304):
        return []
    if status >= 400:
        return _json_error_problems(status, content_type, body)
    if content_type.startswith("text/event-stream"):
        return check_sse(body)
    if content_type.startswith("application/json"):
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [f"HTTP {status}: body is not JSON: {body[:200]!r}"]
        if isinstance(obj, dict) and "error" in obj:
            return [f"HTTP {status} with an error body: {body[:200]!r}"]
    return []


def sse_events(body: bytes) -> list[bytes]:
    """The data of each server-sent event (single-line data fields, as OpenAI streams are)."""
    return [
        line[len(b"data: ") :]
        for line in body.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data: ")
    ]


def check_sse(body: bytes) -> list[str]:
    events = sse_events(body)
    if not events or events[-1] != b"[DONE]":
        return [f"SSE stream does not end with [DONE]: {body[-200:]!r}"]
    problems = []
    for data in events[:-1]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [f"SSE event is not JSON: {data[:200]!r}"]
        if isinstance(chunk, dict) and "error" in chunk:
            problems += error_shape_problems(chunk, "SSE error chunk")
    return problems


def check_ws_message(message: Any) -> list[str]:
    if not isinstance(message, dict) or message.get("type") not in ("chunk", "done", "error"):
        return [f"WebSocket message of unknown shape: {str(message)[:200]}"]
    if message["type"] == "error":
        return error_shape_problems(message.get("error"), "WebSocket error")
    if message["type"] == "chunk" and "error" in (message.get("chunk") or {}):
        return error_shape_problems(message["chunk"], "WebSocket error chunk")
    return []


def first_response(data: bytes) -> tuple[int, str, bytes] | None:
    """Status, content type and body of the first HTTP/1.1 response in raw bytes."""
    if not data.startswith(b"HTTP/1."):
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return None
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", len(rest)) or 0)
    return status, headers.get("content-type", ""), rest[:length]


def _json_error_problems(status: int, content_type: str, body: bytes) -> list[str]:
    if not content_type.startswith("application/json"):
        return [f"HTTP {status} without a JSON body ({content_type!r}): {body[:200]!r}"]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [f"HTTP {status}: body is not JSON: {body[:200]!r}"]
    return error_shape_problems(obj, f"HTTP {status}")


def _error_code(body: bytes) -> Any:
    try:
        return orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
