"""Isolation inside a step: when a step raises, only the requests that make it raise fail.

Requests are validated at the boundary, so a step should never raise because of one; this is
the defence in depth for a value that slipped through. The failed batch is split in halves and
each half run again (and so on down to single requests), so the requests whose part still
raises on its own are found in O(k log n) runs for k faulty requests, and every other request
gets its token from the part it ran in. Running a part again is safe: it writes the same K/V
into the same slots, and none of the failed step's slots is in the prefix cache (blocks are
registered only after a step completes; see Scheduler.update_from_output).

Whether a fault is the engine's rather than a request's (a broken device, a bug that fails
every batch) is decided by the caller: see LLMEngine.step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from triode.engine.core.scheduler import ScheduledRequest, SchedulerOutput
from triode.engine.runner.model_runner import RunnerOutput

logger = logging.getLogger(__name__)

Execute = Callable[[SchedulerOutput], RunnerOutput]


@dataclass(slots=True)
class StepResult:
    """What ran: the merged output of the parts that completed, the requests whose part raised
    on its own (id -> error text), and the first error (None if the step ran whole)."""

    output: RunnerOutput
    faults: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_isolating(execute: Execute, sched: SchedulerOutput) -> StepResult:
    """Run the step; if it raises, run it again in parts without the requests that fail."""
    try:
        return StepResult(execute(sched))
    except Exception as exc:
        logger.exception("engine step failed; running its requests again in parts")
        error = describe(exc)
    items = sched.scheduled
    if sched.blocks_to_copy:
        # NOTE: copies run once, before any part: a part run after another must not copy a
        # shared block over a slot the earlier part already wrote.
        try:
            execute(SchedulerOutput(blocks_to_copy=sched.blocks_to_copy))
        except Exception as copy_exc:
            return StepResult(
                RunnerOutput({}), {i.request_id: describe(copy_exc) for i in items}, error
            )
    result = StepResult(RunnerOutput({}), {}, error)
    if len(items) == 1:
        result.faults[items[0].request_id] = error
        return result
    middle = len(items) // 2
    _run_part(execute, items[:middle], result)
    _run_part(execute, items[middle:], result)
    return result


def _run_part(execute: Execute, items: list[ScheduledRequest], result: StepResult) -> None:
    try:
        output = execute(
            SchedulerOutput(
                scheduled=items, num_scheduled_tokens=sum(len(i.token_ids) for i in items)
            )
        )
    except Exception as exc:
        if len(items) == 1:
            logger.warning("request %s fails the step: %s", items[0].request_id, describe(exc))
            result.faults[items[0].request_id] = describe(exc)
            return
        middle = len(items) // 2
        _run_part(execute, items[:middle], result)
        _run_part(execute, items[middle:], result)
        return
    merged = result.output
    merged.sampled.update(output.sampled)
    if output.logprobs:
        merged.logprobs = {**(merged.logprobs or {}), **output.logprobs}
