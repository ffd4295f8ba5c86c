"""The `triode` command: `triode serve` (the HTTP/WebSocket server) and `triode generate`.

Every EngineConfig field is a flag (`max_num_seqs` -> `--max-num-seqs`), and so is every
ServerConfig field for `serve`; flags left out keep the dataclass defaults.

    triode serve --port 8000 --api-key sk-local --max-num-seqs 64
    triode generate "Write a haiku about trio" --chat --max-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from triode.engine.config import ATTENTION_BACKENDS, CPU_LINEAR_CHOICES, DTYPES, EngineConfig
from triode.web.state import ServerConfig

logger = logging.getLogger("triode")

_CHOICES = {
    "dtype": DTYPES,
    "attention_backend": ATTENTION_BACKENDS,
    "cpu_linear": CPU_LINEAR_CHOICES,
}
_SCALARS = {"str": str, "int": int, "float": float}
# In `generate`, --seed is the sampling seed; the engine's own seed moves aside.
_GENERATE_RENAMES = {"seed": "engine_seed"}


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    renames: dict[str, str] | None = None,
) -> None:
    """One flag per field of `cls`, typed from its annotation; defaults stay the dataclass's."""
    group = parser.add_argument_group(title)
    renames = renames or {}
    for f in dataclasses.fields(cls):
        flag = "--" + renames.get(f.name, f.name).replace("_", "-")
        annotation = str(f.type).replace(" ", "")
        base = annotation.removesuffix("|None")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        kwargs["help"] = f"{cls.__name__}.{f.name} (default: {default!r})"
        if base == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base == "list[str]":
            kwargs.update(action="extend", type=_comma_list, metavar="A,B")
        elif base in _SCALARS:
            kwargs["type"] = _SCALARS[base]
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
        else:  # a new field type must be taught here, not silently skipped
            raise TypeError(f"no flag type for {cls.__name__}.{f.name}: {f.type}")
        group.add_argument(flag, **kwargs)


def _comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _pick(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triode", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible HTTP/WebSocket API")
    add_dataclass_flags(serve, ServerConfig, "server")
    add_dataclass_flags(serve, EngineConfig, "engine")

    generate = commands.add_parser("generate", help="stream one completion to stdout (offline)")
    generate.add_argument("prompt", help='the prompt text ("-" reads it from stdin)')
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--seed", dest="sampling_seed", type=int, default=None)
    generate.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message (chat template)"
    )
    generate.add_argument("--log-level", default="warning")
    add_dataclass_flags(generate, EngineConfig, "engine", _GENERATE_RENAMES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        engine_config = EngineConfig.from_kwargs(**_pick(args, EngineConfig))
    except (TypeError, ValueError) as exc:
        print(f"triode: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return run_serve(engine_config, ServerConfig(**_pick(args, ServerConfig)))
    from triode.web.offline import run_generate

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    return run_generate(
        engine_config,
        prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.sampling_seed,
        chat=args.chat,
    )


def run_serve(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    from triode.web.server import EngineLoadError

    raise_open_file_limit()
    try:
        stopped_at_once = trio.run(_serve_until_signalled, engine_config, server_config)
    except EngineLoadError as exc:
        print(f"triode: the model failed to load: {exc}", file=sys.stderr)
        return 1
    if stopped_at_once:
        print("triode: stopped without waiting for in-flight requests", file=sys.stderr)
        return 130
    return 0


async def _serve_until_signalled(engine_config: EngineConfig, server_config: ServerConfig) -> bool:
    """Serve; the first SIGINT/SIGTERM shuts down gracefully, a second one stops at once.
    Returns True for the second case.

    NOTE: one signal receiver stays open for the whole run. Letting trio's default handler turn
    the second SIGINT into KeyboardInterrupt is unreliable: it is raised in whatever task code
    is running, and a handler's cleanup can swallow it.
    """
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
            await serve(engine_config, server_config, first_signal.wait)
        except EngineLoadError as exc:  # re-raised below, not wrapped in the nursery's group
            load_error = exc
        nursery.cancel_scope.cancel()
    if load_error is not None:
        raise load_error
    return stopped_at_once


def raise_open_file_limit(wanted: int = 65536) -> None:
    """Lift the soft RLIMIT_NOFILE toward the hard limit: every client socket is a file
    descriptor, and a common default soft limit of 1024 refuses connections near a thousand."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


if __name__ == "__main__":
    sys.exit(main())
