"""Scrape a server's Prometheus /metrics and check that nothing outlived its request.

After a load test every request has ended (finished, aborted by a disconnect, or timed out), so
a server that releases everything shows no running or waiting request and no KV-cache block
held. Aborts travel from a closed socket to the engine asynchronously, so the check waits a
short grace period for the gauges to reach zero before calling anything a leak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

LEAK_GAUGES = (
    "triode:num_requests_running",
    "triode:num_requests_waiting",
    "triode:kv_cache_usage_perc",
)
_POLL_INTERVAL_S = 0.25


def metric_values(text: str, names: tuple[str, ...] = LEAK_GAUGES) -> dict[str, float]:
    """Each named metric's value, summed over its label sets; absent metrics are left out."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


@dataclass(frozen=True, slots=True)
class LeakCheck:
    values: dict[str, float]  # the last scrape
    waited_s: float
    missing: tuple[str, ...]  # gauges the server does not export

    @property
    def is_clean(self) -> bool:
        return not self.missing and all(v == 0 for v in self.values.values())

    def describe(self) -> str:
        parts = [f"{name}={value:g}" for name, value in sorted(self.values.items())]
        parts += [f"{name}=absent" for name in self.missing]
        verdict = "no leaks" if self.is_clean else "LEAK"
        return f"{verdict} after {self.waited_s:.2f} s: " + ", ".join(parts)


async def scrape(base_url: str, api_key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        response = await client.get("/metrics")
        response.raise_for_status()
        return response.text


async def wait_until_idle(
    base_url: str, grace_s: float = 5.0, api_key: str | None = None
) -> LeakCheck:
    """Scrape until every leak gauge is 0 or `grace_s` has passed; the last scrape decides."""
    start = time.perf_counter()
    deadline = trio.current_time() + grace_s
    while True:
        # NOTE: polling is all a remote /metrics offers; the interval bounds the extra wait.
        values = metric_values(await scrape(base_url, api_key))
        missing = tuple(name for name in LEAK_GAUGES if name not in values)
        check = LeakCheck(values, time.perf_counter() - start, missing)
        if check.is_clean or missing or trio.current_time() >= deadline:
            return check
        await trio.sleep(_POLL_INTERVAL_S)
