"""The HTTP/WebSocket edge: our own sockets and connection handling around hypercorn's HTTP/1.1
and WebSocket protocol code (hypercorn_compat.py names the hypercorn versions it fits).

- listener.py: `serve_edge`, accepting connections and shutting down within a deadline.
- connection.py: `EdgeConnection`, one connection's containment, read and write deadlines.
- h11_protocol.py: HTTP framing rules (505, Content-Length with Transfer-Encoding) and JSON
  bodies on the errors the HTTP layer answers itself.
- responses.py: those error responses; limits.py: `EdgeLimits`, the timeouts.
"""

from triode.web.edge.limits import EdgeLimits
from triode.web.edge.listener import serve_edge

__all__ = ["EdgeLimits", "serve_edge"]
