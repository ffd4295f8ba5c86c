"""create_app: the quart-trio application, its hooks and error handlers.

The app holds no engine task: the engine runs in its own supervised task (web/server.py), and
each request's work lives in its handler. Two small extensions of quart-trio's classes make
request cleanup unconditional: `TriodeRequest` carries cleanup callbacks, and
`TriodeHTTPConnection` runs them when the connection's handling ends, however it ends (the
client disconnecting before or during the body, a timeout, an error).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from triode.web.access import (
    OPEN_PATHS,
    HostPolicy,
    bearer_token,
    check_key,
    cors_headers,
    host_refused,
    is_origin_allowed,
    origin_refused,
    preflight_headers,
)
from triode.web.errors import ApiError, api_error_from
from triode.web.routes_admin import register_admin_routes
from triode.web.routes_ai_sdk import register_ai_sdk_routes
from triode.web.routes_openai import register_openai_routes
from triode.web.routes_page import PAGE_PATHS, register_page_routes
from triode.web.routes_responses import register_responses_routes
from triode.web.routes_streams import register_stream_routes
from triode.web.routes_ws import register_ws_route
from triode.web.state import AppState

logger = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 2.0


class TriodeRequest(TrioRequest):
    """A request with callbacks to run when its connection is done with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cleanups: list[Callable[[], Awaitable[None]]] = []


class TriodeHTTPConnection(TrioASGIHTTPConnection):
    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: TriodeRequest, send: Any
    ) -> None:
        async def send_with_shielded_end(message: Any) -> None:
            # NOTE: the last body event makes hypercorn report the stream closed, which makes
            # quart-trio cancel this task; unshielded, that cancel lands inside hypercorn's
            # bookkeeping and its keep-alive timer is never restarted: idle connections then
            # stay open forever and a graceful shutdown waits out its whole timeout.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        try:
            await super().handle_request(nursery, request, send_with_shielded_end)
        finally:
            # NOTE: on disconnect quart-trio cancels this task, wherever it is: before, during
            # or after our handler. Shielded, so the cleanups run anyway.
            with trio.move_on_after(CLEANUP_TIMEOUT_S) as scope:
                scope.shield = True
                for cleanup in request.cleanups:
                    try:
                        await cleanup()
                    except Exception:
                        logger.exception("request cleanup failed")


class TriodeApp(QuartTrio):
    request_class = TriodeRequest
    asgi_http_class = TriodeHTTPConnection


def create_app(state: AppState) -> TriodeApp:
    # static_folder=None: no implicit /static route serving the working directory's files.
    app = TriodeApp("triode", static_folder=None)
    app.config.update(
        # A stream lasts as long as its generation; Quart's defaults would cut it.
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=None,
        MAX_CONTENT_LENGTH=state.config.max_request_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=False,  # preflights are answered by `check_access`
    )
    app.extensions["triode"] = state

    host_policy = HostPolicy.for_server(state.config.host, state.config.allowed_hosts)

    @app.before_request
    async def check_access() -> Response | None:
        host = request.headers.get("Host")
        if not host_policy.allows(host):
            return host_refused(host or "").to_response()
        origin = request.headers.get("Origin")
        if not is_origin_allowed(origin, host, state.config.allowed_origins):
            return origin_refused(origin or "").to_response()
        g.cors_origin = origin  # only an allowed origin gets CORS headers
        if request.method == "OPTIONS" and origin is not None:  # a CORS preflight
            requested = request.headers.get("Access-Control-Request-Headers")
            return Response(b"", status=204, headers=preflight_headers(origin, requested))
        if request.path not in OPEN_PATHS and request.path not in PAGE_PATHS:
            refusal = check_key(state.config.api_key, [bearer_token(request.headers)])
            if refusal is not None:
                return refusal.to_response()
        return None

    @app.before_websocket
    async def check_websocket_host() -> Response | None:
        host = websocket.headers.get("Host")
        return None if host_policy.allows(host) else host_refused(host or "").to_response()

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        origin = g.get("cors_origin")
        if origin is not None:  # set by check_access for allowed origins only
            response.headers.update(cors_headers(origin))
        return response

    @app.errorhandler(ApiError)
    async def on_api_error(error: ApiError) -> Response:
        return error.to_response()

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = (error.name or "error").lower().replace(" ", "_")
        message = error.description or error.name or "error"
        return ApiError(status, message, kind, None, code).to_response()

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        return api_error_from(error).to_response()  # logs it; a 500 only for our bugs

    register_openai_routes(app, state)
    register_stream_routes(app, state)
    register_ai_sdk_routes(app, state)
    register_responses_routes(app, state)
    register_admin_routes(app, state)
    register_ws_route(app, state)
    register_page_routes(app)
    return app
