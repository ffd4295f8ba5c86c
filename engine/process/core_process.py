"""The engine core in a process of its own: `python -m triode.engine.process.core_process FD`.

The trio actor (`AsyncEngine`, through `engine.process.core_client`) starts this with one end of a
socket pair as FD. Its only job: build an `LLMEngine` from the `EngineConfig` it is sent,
answer ("ready", ModelInfo) or ("failed", the exception), then step while there is work and block
while there is none. Messages in: ("add", request_id, EngineInput), ("abort", [ids]),
("shutdown",). Out, after every step or abort: ("out", deltas, SchedulerStats, adds applied so
far, failed steps in a row, last error, (step s, forward s, tokens)).

Why a process: in the server's own process the step's Python (a few hundred torch op calls
per step, each re-taking the GIL) and the event loop's Python (parsing, SSE, socket writes)
take turns on one GIL, and under load the step thread waits for it (BENCHMARKS.md). Here the
step never waits for the front end, and it computes step N+1 while the actor sends step N's
tokens. The process ignores SIGINT (the server decides when it stops) and exits when the
actor says so or its end of the socket closes (which is also what a killed server leaves:
an idle engine blocks on the socket, a busy one looks at it between steps).

NOTE: not PR_SET_PDEATHSIG: trio starts processes from a worker thread, and that signal fires
when the starting thread exits, not the parent process.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
import time
from typing import Any

from triode.engine.process.wire import BlockingFrames

logger = logging.getLogger("triode.engine.process.core_process")


def serve(frames: BlockingFrames) -> int:
    """Load, report, loop. Returns the exit status."""
    kind, config, log_level = frames.receive()
    assert kind == "config"
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    from triode.engine.errors import InvalidRequestError
    from triode.engine.llm_engine import LLMEngine
    from triode.engine.process.core_client import EngineStartError
    from triode.engine.runner.thread_policy import ThreadPolicy, threads_beside_front_end
    from triode.streaming.delta import RequestDelta

    try:
        engine = LLMEngine(config)
    except BaseException as exc:  # report why (the exception itself when it pickles), then exit
        try:
            pickle.dumps(exc)
        except Exception:
            exc = EngineStartError(f"{type(exc).__name__}: {exc}")
        frames.send(("failed", exc))
        return 1
    if engine.thread_policy is not None:  # the server that owns us is our own front end
        torch_threads = engine.thread_policy.max_threads
        max_threads = threads_beside_front_end(torch_threads)
        if max_threads != torch_threads:
            import torch

            torch.set_num_threads(max_threads)
        engine.thread_policy = ThreadPolicy(max_threads, our_pids=("self", os.getppid()))
    frames.send(("ready", engine.model_info))
    num_adds = 0
    while True:
        block = not engine.has_unfinished_requests()
        messages: list[Any] = []
        try:
            while (message := frames.receive(block)) is not None:
                messages.append(message)
                block = False
        except EOFError:
            return 0
        deltas: list[RequestDelta] = []
        aborts: list[str] = []
        for message in messages:
            kind = message[0]
            if kind == "add":
                _, request_id, engine_input = message
                num_adds += 1
                try:
                    engine.add_input(request_id, engine_input)
                except InvalidRequestError as exc:
                    deltas.extend(
                        RequestDelta(request_id, i, finish_reason="error", error=str(exc))
                        for i in range(engine_input.params.n)
                    )
            elif kind == "abort":
                aborts.extend(message[1])
            elif kind == "shutdown":
                return 0
        if aborts:
            deltas.extend(engine.abort(aborts))
        timing = (0.0, 0.0, 0)
        if engine.has_unfinished_requests():
            runner_timings = engine.runner.timings
            forward0, tokens0 = runner_timings.forward, runner_timings.num_tokens
            t0 = time.perf_counter()
            deltas.extend(engine.step())
            timing = (
                time.perf_counter() - t0,
                runner_timings.forward - forward0,
                runner_timings.num_tokens - tokens0,
            )
        frames.send(
            (
                "out",
                deltas,
                engine.stats(),
                num_adds,
                engine.num_failed_steps,
                engine.last_error,
                timing,
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        return serve(BlockingFrames(sock))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return 0  # the actor went away
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
