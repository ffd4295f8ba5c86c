"""The browser chat page: `/` and its script and style sheet, served from package data.

The files live in web/static/ and are read once through importlib.resources, so the page works
from an installed wheel as well as from a checkout. They hold no secrets and call only this
server's API, so they are served without an API key (the page asks for one in its settings).
A Content-Security-Policy keeps the page to its own origin: no CDN, no inline script, and
nothing the model writes can load or run anything.
"""

from __future__ import annotations

from importlib import resources

from quart import Quart, Response, request

# URL path -> (file in web/static/, content type); only these are served.
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/static/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(PAGE_FILES)

# NOTE: CSP 'self' also covers ws:// and wss:// to this host and port, which the page needs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def page_responses() -> dict[str, tuple[bytes, dict[str, str]]]:
    """URL path -> (body, headers), read from the package once."""
    folder = resources.files("triode.web") / "static"
    responses = {}
    for path, (name, content_type) in PAGE_FILES.items():
        headers = {
            "Content-Type": content_type,
            # Revalidate on every load, so an upgraded server never runs a stale script.
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        responses[path] = ((folder / name).read_bytes(), headers)
    return responses


def register_page_routes(app: Quart) -> None:
    responses = page_responses()

    async def page_file() -> Response:
        body, headers = responses[request.path]
        return Response(body, headers=headers)

    for path in PAGE_FILES:
        app.add_url_rule(path, "page:" + path, page_file, methods=["GET"])
