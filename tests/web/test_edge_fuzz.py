"""A fast slice of the fuzz (load_tests/fuzz.py; the long run is `python -m triode.load_tests
fuzz`): generated hostile requests over every route, the WebSocket and raw sockets, against the
shared tiny-model server while innocent streams run beside them. Never a 5xx, OpenAI's error
shape on every 4xx and stream error, no hang; every innocent stream completes with all its
tokens; nothing is left held afterwards.

Cases on a known engine gap another issue is fixing (fuzz_cases.KNOWN_ENGINE_GAPS) are left out
here and kept in the long run.
"""

from __future__ import annotations

import threading

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from triode.load_tests.fuzz import innocent_sse, innocent_ws, run_case
from triode.load_tests.fuzz_cases import Case, FuzzTarget, all_cases
from triode.load_tests.server_metrics import wait_until_idle

pytestmark = pytest.mark.timeout(300)

NUM_EXAMPLES = 80
CASE_TIMEOUT_S = 30.0


class InnocentStreams:
    """SSE and WebSocket streams back to back in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.num_ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="innocent", daemon=True)

    def _run(self) -> None:
        async def one_round() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
                for failure in (await innocent_sse(client, "tiny"), await innocent_ws(self.url, "tiny", client.headers)):  # fmt: skip
                    if failure is None:
                        self.num_ok += 1
                    else:
                        self.failures.append(failure)

        while not self._stop.is_set():
            trio.run(one_round)

    def __enter__(self) -> InnocentStreams:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


def test_hostile_requests_touch_nothing_else(tiny_server):
    url = tiny_server.url
    target = FuzzTarget("tiny", include_known_gaps=False)

    async def send(case: Case) -> tuple[str, list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=CASE_TIMEOUT_S) as client:
            return await run_case(case, url, client, CASE_TIMEOUT_S)

    @settings(
        max_examples=NUM_EXAMPLES,
        derandomize=True,  # the same cases on every run; the long run explores
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(all_cases(target))
    def hostile(case: Case) -> None:
        label, problems = trio.run(send, case)
        assert not problems, f"{label}: {problems}"

    with InnocentStreams(url) as innocent:
        hostile()
    assert innocent.failures == []
    assert innocent.num_ok >= 2
    check = trio.run(wait_until_idle, url, 15.0)
    assert check.is_clean, check.describe()
    assert httpx.get(f"{url}/health").status_code == 200
