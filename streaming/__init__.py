"""The path a token takes to a socket, independent of the engine and the web framework.

detokenizer (ids to stable text), stop (stop strings held back across steps), delta and
request_stream (the coalescing per-request channel), sse (SSE framing and decoding),
ws_session and ws_limits (the WebSocket protocol: many generations per socket).
"""
