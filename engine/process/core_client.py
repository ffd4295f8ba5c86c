"""CoreProcess: the actor's handle on an engine core running in a child process.

`start` launches `python -m triode.engine.process.core_process` with one end of a socket pair, sends
the `EngineConfig`, and returns once the child reports the model loaded (or raises the
exception the child's load raised, or `EngineStartError` when that cannot cross). Then `send` carries commands and `receive` the
child's per-step outputs (see `core_process` for the messages). `close` asks the child to
stop, waits a few seconds, and kills it if it has not.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from typing import Any

import trio

from triode.engine.config import EngineConfig
from triode.engine.inputs import ModelInfo
from triode.engine.process.wire import TrioFrames

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 10.0


class EngineStartError(RuntimeError):
    """The engine process could not load the model (the message says why)."""


class CoreProcess:
    def __init__(self, process: trio.Process, frames: TrioFrames, model_info: ModelInfo) -> None:
        self.process = process
        self.frames = frames
        self.model_info = model_info

    @classmethod
    async def start(cls, config: EngineConfig) -> CoreProcess:
        ours, theirs = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "triode.engine.process.core_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        frames = TrioFrames(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        try:
            await frames.send(("config", config, logging.getLogger("triode").getEffectiveLevel()))
            reply = await frames.receive()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            code = await process.wait()
            await frames.stream.aclose()
            raise EngineStartError(
                f"the engine process exited during start-up (status {code})"
            ) from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await _kill(process)
                await frames.stream.aclose()
            raise
        if reply[0] != "ready":
            with trio.CancelScope(shield=True):
                await _kill(process)
                await frames.stream.aclose()
            raise reply[1]  # the child's own exception (ModelNotFoundError, ...)
        return cls(process, frames, reply[1])

    async def send(self, message: Any) -> None:
        await self.frames.send(message)

    async def receive(self) -> Any:
        """The child's next message; EOFError once it has exited."""
        try:
            return await self.frames.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise EOFError(str(exc)) from None

    async def close(self, *, is_graceful: bool = True) -> None:
        """Ask the child to stop; kill it if it has not within a few seconds (at once when not
        `is_graceful`). Shielded: runs to the end even when the caller is being cancelled."""
        with trio.CancelScope(shield=True):
            if not is_graceful:
                await _kill(self.process)
            if self.process.returncode is None:
                try:
                    with trio.move_on_after(1.0):
                        await self.frames.send(("shutdown",))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                with trio.move_on_after(_STOP_TIMEOUT_S):
                    await self.process.wait()
                await _kill(self.process)
            await self.frames.stream.aclose()

    def exit_description(self) -> str:
        code = self.process.returncode
        if code is None:
            return "the engine process closed its connection"
        if code < 0:
            return f"the engine process was killed by signal {-code}"
        return f"the engine process exited with status {code}"


async def _kill(process: trio.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()
