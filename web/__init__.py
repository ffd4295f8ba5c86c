"""The server: a quart-trio app on hypercorn's trio worker, and the `triode` command.

    web.server.serve(engine_config, server_config, shutdown_trigger)   # run it (trio)
    web.app.create_app(state)                                          # the ASGI app
    web.cli.main()                                                     # `triode serve|generate`

Routes: OpenAI's /v1/completions, /v1/chat/completions, /v1/models (routes_openai), /health,
/metrics, /tokenize, /detokenize (routes_admin), the WebSocket /v1/ws (routes_ws). Requests are
validated in protocol.py, turned into engine inputs in prepare.py, streamed by generation.py
and formatted by formatting.py; errors.py maps every failure to OpenAI's error shape.
"""
