"""A tiny-model triode server for the load-generator tests (real sockets on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.web.conftest import running_server, tiny_engine_config
from triode.web.server import RunningServer
from triode.web.state import ServerConfig


@pytest.fixture(scope="session")
def load_server(tiny_folder) -> Iterator[RunningServer]:
    """The tiny random-weight Llama behind triode's server, with room for many sockets."""
    server_config = ServerConfig(port=0, max_ws_connections=1024, shutdown_timeout_s=5.0)
    yield from running_server(tiny_engine_config(tiny_folder), server_config)
