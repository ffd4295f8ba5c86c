"""The browser chat page: `/`, its scripts and style sheets, served from package data.

The files live in web/static/ (the page's own modules) and web/static/vendor/ (pinned markdown,
sanitizer and highlighting libraries, see its README) and are read once through
importlib.resources, so the page works from an installed wheel as well as from a checkout. They
hold no secrets and call only this server's API, so they are served without an API key (the
page asks for one in its settings). A Content-Security-Policy keeps the page to its own origin:
no CDN, no inline script or style, and nothing the model writes can load or run anything.
"""

from __future__ import annotations

from importlib import resources

from quart import Quart, Response, request

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Served as /static/<folder>/<name>: the scripts and style sheets of these folders of web/static.
STATIC_FOLDERS = ("", "vendor")


def _page_files() -> dict[str, tuple[str, str]]:
    """URL path -> (file under web/static/, content type); only these are served."""
    static = resources.files("triode.web") / "static"
    files = {"/": ("index.html", "text/html; charset=utf-8")}
    for folder in STATIC_FOLDERS:
        directory = static / folder if folder else static
        for entry in sorted(directory.iterdir(), key=lambda e: e.name):
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if entry.is_file() and suffix in CONTENT_TYPES:
                name = f"{folder}/{entry.name}" if folder else entry.name
                files[f"/static/{name}"] = (name, CONTENT_TYPES[suffix])
    return files


PAGE_FILES = _page_files()
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
        responses[path] = (folder.joinpath(*name.split("/")).read_bytes(), headers)
    return responses


def register_page_routes(app: Quart) -> None:
    responses = page_responses()

    async def page_file() -> Response:
        body, headers = responses[request.path]
        return Response(body, headers=headers)

    for path in PAGE_FILES:
        app.add_url_rule(path, "page:" + path, page_file, methods=["GET"])
