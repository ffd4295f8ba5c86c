"""The `triode` command: `triode serve` (the HTTP/WebSocket server) and `triode generate`
(one completion, offline).

Every field of ServerConfig and EngineConfig is a flag (`max_num_seqs` -> `--max-num-seqs`);
tyro builds the flags from the dataclasses and takes each flag's help from the field's
docstring, so the help and the code cannot drift apart. Flags left out keep the defaults.

    triode serve --port 8000 --api-key sk-local --max-num-seqs 64
    triode generate "Write a haiku about trio" --chat --max-tokens 64

Start-up failures (a busy port, a missing model, a bad flag value) are one line on stderr and
exit status 1 (2 for a bad flag); `--log-level debug` adds the traceback. The port is bound
before anything heavy is imported, so a busy one is reported at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import tyro
from tyro.conf import OmitArgPrefixes, OmitSubcommandPrefixes, Positional, arg, subcommand

from triode.engine import EngineConfig, GenerateOptions
from triode.host import raise_open_file_limit
from triode.web.listen import ListenError, open_listen_socket
from triode.web.state import LogLevel, ServerConfig

logger = logging.getLogger("triode")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class Serve:
    """Serve the OpenAI-compatible HTTP API, the WebSocket API and the chat page."""

    server: OmitArgPrefixes[ServerConfig]
    engine: OmitArgPrefixes[EngineConfig]


@dataclass
class Generate:
    """Stream one completion to stdout, offline (no server)."""

    prompt: Annotated[Positional[str], arg(metavar="PROMPT")]
    """The prompt text; - reads it from stdin."""
    generation: OmitArgPrefixes[GenerateOptions]
    engine: OmitArgPrefixes[EngineConfig]
    log_level: LogLevel = "warning"
    """Logging level."""


Command = Annotated[Serve, subcommand("serve")] | Annotated[Generate, subcommand("generate")]


def parse(argv: Sequence[str] | None = None) -> Serve | Generate:
    """The command and its configs; a bad flag or value exits 2 with a usage message."""
    return tyro.cli(
        Command,  # type: ignore[arg-type]
        prog="triode",
        description=__doc__.split("\n\n")[0],
        args=argv,
        config=(OmitSubcommandPrefixes,),
    )


def main(argv: Sequence[str] | None = None) -> int:
    command = parse(argv)
    if isinstance(command, Serve):
        level = command.server.log_level
        logging.basicConfig(level=level.upper(), format=_LOG_FORMAT)
        if level != "debug":  # its "Running on" line would come before the model loads
            logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
        return run_serve(command.engine, command.server)
    logging.basicConfig(level=command.log_level.upper(), format=_LOG_FORMAT)
    from triode.engine import run_generate

    prompt = sys.stdin.read() if command.prompt == "-" else command.prompt
    return _reporting_failures(
        lambda: run_generate(command.engine, prompt, command.generation),
        command.log_level == "debug",
    )


def run_serve(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    raise_open_file_limit()
    try:
        # NOTE: before importing the server (torch, transformers: seconds), so a busy port is
        # reported at once and the model is never loaded for a server that cannot listen.
        sock = open_listen_socket(server_config.host, server_config.port)
    except ListenError as exc:
        print(f"triode: {exc}", file=sys.stderr)
        return 1
    is_debug = server_config.log_level == "debug"
    return _reporting_failures(lambda: _run_server(engine_config, server_config, sock), is_debug)


def _run_server(
    engine_config: EngineConfig, server_config: ServerConfig, sock: socket.socket
) -> int:
    import trio

    from triode.web.server import EngineLoadError

    try:
        stopped_at_once = trio.run(_serve_until_signalled, engine_config, server_config, sock)
    except EngineLoadError as exc:
        print(f"triode: {exc}", file=sys.stderr)
        return 1
    if stopped_at_once:
        print("triode: stopped without waiting for in-flight requests", file=sys.stderr)
        return 130
    return 0


def _reporting_failures(run: Callable[[], int], is_debug: bool) -> int:
    """Run; an unexpected exception becomes one line and exit 1 (a traceback with debug)."""
    try:
        return run()
    except Exception as exc:
        if is_debug:
            logger.exception("failed")
        detail = "" if is_debug else " (--log-level debug shows the traceback)"
        print(f"triode: {type(exc).__name__}: {exc}{detail}", file=sys.stderr)
        return 1


async def _serve_until_signalled(
    engine_config: EngineConfig, server_config: ServerConfig, sock: socket.socket
) -> bool:
    """Serve; the first SIGINT/SIGTERM shuts down gracefully, a second one stops at once.
    Returns True for the second case.

    NOTE: one signal receiver stays open for the whole run. Letting trio's default handler turn
    the second SIGINT into KeyboardInterrupt is unreliable: it is raised in whatever task code
    is running, and a handler's cleanup can swallow it.
    """
    import trio

    from triode.web.server import EngineLoadError, serve

    first_signal = trio.Event()
    load_error: EngineLoadError | None = None
    stopped_at_once = False

    async def watch_signals(cancel_scope: trio.CancelScope) -> None:
        nonlocal stopped_at_once
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("received %s", signal.Signals(signum).name)
                if first_signal.is_set():
                    stopped_at_once = True
                    cancel_scope.cancel()
                    return
                first_signal.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, nursery.cancel_scope)
        try:
            await serve(engine_config, server_config, first_signal.wait, listen_socket=sock)
        except EngineLoadError as exc:  # re-raised below, not wrapped in the nursery's group
            load_error = exc
        nursery.cancel_scope.cancel()
    if load_error is not None:
        raise load_error
    return stopped_at_once


if __name__ == "__main__":
    sys.exit(main())
