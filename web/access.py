"""Access control: the Host check, the API key and the browser-origin policy (CORS and the
WebSocket check).

Hosts (DNS rebinding): a page on any domain can make its name resolve to 127.0.0.1 and then
talk to a local server as "same-origin". A server bound to loopback (the default) therefore
accepts only requests whose Host names loopback (`localhost` or a subdomain of it, an address
in 127.0.0.0/8, `[::1]`; any port) or a name listed in `allowed_hosts` (a leading dot allows
subdomains, "*" turns the check off); any other Host gets 403. A server bound elsewhere (say
0.0.0.0) checks Host only when `allowed_hosts` is given. A request without Host (HTTP/1.0) is
not a browser's and passes.

Origins: a request without an Origin header (curl, SDKs) is not a browser's and passes. A
browser's is allowed when it is same-origin, on localhost, listed in `allowed_origins`, or when
that list holds "*"; any other is refused with 403 (a refusal up front, rather than only
withholding CORS headers, also stops cross-site "simple" POSTs from spending compute).

Keys: HTTP clients send `Authorization: Bearer <key>`. Browsers cannot set headers on a
WebSocket, so the handshake also accepts `?api_key=<key>` or a `bearer.<key>` subprotocol.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from triode.web.errors import ApiError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BEARER_SUBPROTOCOL_PREFIX = "bearer."
# Paths a load balancer, Prometheus or a version probe reads without a key.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})
CORS_MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which Host headers the server answers (see the module docstring)."""

    is_enabled: bool
    allowed: tuple[str, ...] = ()  # lower-case names; ".example.com" allows its subdomains

    @classmethod
    def for_server(cls, bind_host: str, allowed_hosts: Iterable[str]) -> HostPolicy:
        allowed = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        if "*" in allowed:
            return cls(False, allowed)
        return cls(bool(allowed) or is_loopback_name(bind_host), allowed)

    def allows(self, host_header: str | None) -> bool:
        if not self.is_enabled or host_header is None:
            return True
        name = host_name(host_header)
        if name is None:
            return False
        if is_loopback_name(name):
            return True
        return any(
            name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry)))
            for entry in self.allowed
        )


def host_name(host_header: str) -> str | None:
    """The name in a Host header, lower-cased, without port or IPv6 brackets; None when the
    header is not of the form `name[:port]` or `[v6-address][:port]`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name or None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def is_loopback_name(name: str) -> bool:
    """A name no DNS answer can move off this machine: localhost (and its subdomains, which
    browsers resolve locally) or a loopback address."""
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_refused(host: str) -> ApiError:
    return ApiError(
        403,
        f"host {host!r} is not allowed: this server answers only requests addressed to "
        "localhost (start it with --allowed-hosts to add names)",
        "invalid_request_error",
        None,
        "host_not_allowed",
    )


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


def check_key(expected: str | Sequence[str] | None, given: Iterable[str | None]) -> ApiError | None:
    """None when no key is configured or one of the given candidates matches one of them."""
    keys = [expected] if isinstance(expected, str) else list(expected or [])
    if not keys:
        return None
    candidates = [g for g in given if g]
    for candidate in candidates:
        if any(hmac.compare_digest(candidate.encode(), key.encode()) for key in keys):
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
    headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
    headers["Access-Control-Allow-Headers"] = requested_headers or "Authorization, Content-Type"
    headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
    return headers
