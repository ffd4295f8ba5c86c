"""ApiError and the one place where exceptions become OpenAI-shaped errors.

Every error the server sends has the shape {"error": {"message", "type", "param", "code"}}:
400 for bad input, 401 for a bad key, 403 for a refused origin, 404 for an unknown model or
route, 503 (with Retry-After) when the queue is full or the engine is not serving, 500 only
for our own bugs. Status codes, wording of HTTP-level errors and Retry-After live here, not in
the engine.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from quart import Response

from triode.engine import (
    ContextLengthError,
    EngineDeadError,
    EngineNotReadyError,
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status and OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def to_object(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def to_response(self) -> Response:
        return json_response({"error": self.to_object()}, self.status, self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def service_unavailable(message: str, code: str, retry_after_s: int | None = None) -> ApiError:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return ApiError(503, message, "server_error", None, code, headers)


def internal_error(message: str = "internal server error") -> ApiError:
    return ApiError(500, message, "server_error", None, "internal_error")


def api_error_from(exc: BaseException) -> ApiError:
    """Map any exception raised while serving a request to the error the client gets, by its
    type (the engine's typed errors carry the field as `param`; no message is parsed)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextLengthError):
        return bad_request(str(exc), exc.param, "context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, QueueFullError):
        return service_unavailable(str(exc), "server_overloaded", exc.retry_after_s)
    if isinstance(exc, EngineDeadError):
        return service_unavailable(str(exc), "engine_dead")
    if isinstance(exc, EngineStoppedError):
        return service_unavailable(str(exc), "server_shutting_down", 1)
    if isinstance(exc, EngineNotReadyError):
        return service_unavailable(str(exc), "engine_not_ready", 1)
    if isinstance(exc, ValueError):
        # NOTE: a safety net. Request preparation raises typed errors; an untyped ValueError
        # there is still most likely about the input, and bad input never gets a 500.
        logger.warning("untyped ValueError while preparing a request: %s", exc)
        return bad_request(str(exc))
    logger.error("unexpected error while serving a request", exc_info=exc)
    return internal_error()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )
