"""Access control: the API key and the browser-origin policy (CORS and the WebSocket check).

Origins: a request without an Origin header (curl, SDKs) is not a browser's and passes. A
browser's is allowed when it is same-origin, on localhost, listed in `allowed_origins`, or when
that list holds "*"; any other is refused with 403 (a refusal up front, rather than only
withholding CORS headers, also stops cross-site "simple" POSTs from spending compute).

Keys: HTTP clients send `Authorization: Bearer <key>`. Browsers cannot set headers on a
WebSocket, so the handshake also accepts `?api_key=<key>` or a `bearer.<key>` subprotocol.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from triode.web.errors import ApiError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BEARER_SUBPROTOCOL_PREFIX = "bearer."
# Paths a load balancer, Prometheus or a version probe reads without a key.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})
CORS_MAX_AGE_S = 600


def is_origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """The origin policy above; `host` is the request's Host header."""
    if origin is None:
        return True
    allowed = list(allowed)
    if "*" in allowed or origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or hostname is None:
        return False
    return hostname in LOCAL_HOSTS or (host is not None and parts.netloc == host)


def origin_refused(origin: str) -> ApiError:
    return ApiError(
        403,
        f"origin {origin!r} is not allowed (start the server with --allowed-origins to allow it)",
        "invalid_request_error",
        None,
        "origin_not_allowed",
    )


def key_refused(was_given: bool) -> ApiError:
    message = (
        "Incorrect API key provided."
        if was_given
        else "Missing API key: send the header 'Authorization: Bearer <key>'."
    )
    return ApiError(401, message, "invalid_request_error", None, "invalid_api_key")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def check_key(expected: str | None, given: Iterable[str | None]) -> ApiError | None:
    """None when no key is configured or one of the given candidates matches."""
    if expected is None:
        return None
    candidates = [g for g in given if g]
    for candidate in candidates:
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return None
    return key_refused(bool(candidates))


def websocket_key_candidates(
    headers: Mapping[str, str], query_key: str | None, subprotocols: Iterable[str]
) -> list[str | None]:
    from_subprotocols = [
        p[len(BEARER_SUBPROTOCOL_PREFIX) :]
        for p in subprotocols
        if p.startswith(BEARER_SUBPROTOCOL_PREFIX)
    ]
    return [bearer_token(headers), query_key, *from_subprotocols]


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Retry-After",
        "Vary": "Origin",
    }


def preflight_headers(origin: str, requested_headers: str | None) -> dict[str, str]:
    headers = cors_headers(origin)
    headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    headers["Access-Control-Allow-Headers"] = requested_headers or "Authorization, Content-Type"
    headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
    return headers
