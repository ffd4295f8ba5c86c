"""The server: a quart-trio app behind our HTTP/WebSocket edge (web/edge/: sockets and
connections, on hypercorn's protocol code), and the `triode` command.

    web.server.serve(engine_config, server_config, shutdown_trigger)   # run it (trio)
    web.app.create_app(state)                                          # the ASGI app
    web.cli.main()                                                     # `triode serve|generate`

Routes: OpenAI's /v1/completions, /v1/chat/completions, /v1/models[/{id}] (routes_openai),
/health, /version, /metrics, /tokenize, /detokenize (routes_admin), the WebSocket /v1/ws
(routes_ws). A request body is parsed (protocol.py), templated, tokenized and checked once, in
an input-processor worker thread (prepare.py), submitted and streamed by generation.py and
formatted by formatting.py; errors.py maps every failure to OpenAI's error shape. web/ talks to
the engine only through the names `triode.engine` exports (tests/web/test_public_api.py).
"""
