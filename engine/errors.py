"""The engine's typed errors: what went wrong and which request field caused it.

The engine knows nothing of HTTP: web/ maps these to OpenAI errors (status, type, code,
Retry-After) in one place. Errors about a request carry the offending field as `param`, so no
one has to recover it from the message text.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequestError(EngineError, ValueError):
    """A request the engine cannot take as given; `param` names the field (or None)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InvalidRequestError):
    """The prompt plus the requested completion does not fit the model's context."""


class QueueFullError(EngineError):
    """Too many requests are waiting; the caller may retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineNotReadyError(EngineError):
    """The engine does not take requests now: still loading (this class itself), draining or
    shut down (EngineStoppedError), or failed (EngineDeadError)."""


class EngineStoppedError(EngineNotReadyError):
    """The engine is draining or has shut down: it takes no new requests."""


class EngineDeadError(EngineNotReadyError):
    """The engine failed (to load, or later) and cannot serve until restarted."""
