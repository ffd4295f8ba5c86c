"""The soak: thousands of connections in waves, some leaving mid-stream, some reading slowly;
then /metrics must show nothing left behind.

    python -m triode.load_tests soak --url http://127.0.0.1:8000 --waves 6 --wave-size 400

Every request opens its own connection (SSE and WebSocket alternate) and draws, from the seed,
one of four behaviours: read normally; disconnect after a few text chunks; disconnect after a
short time, often while still queued (before any token); or stop reading for a while, then read
to the end. Afterwards the server's `triode:num_requests_running`, `..._waiting` and
`kv_cache_usage_perc` must all be 0 within a grace period, or the soak fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from triode.load_tests.record import ReadBehaviour
from triode.load_tests.runner import RunConfig, RunResult, run_workload
from triode.load_tests.server_metrics import LeakCheck, wait_until_idle
from triode.load_tests.transports import open_transports
from triode.load_tests.workload import RequestSpec, SamplingOptions, TokenRange, build_specs

SHORT_GENERATIONS = TokenRange(4, 32)


@dataclass(frozen=True, slots=True)
class SoakConfig:
    url: str
    model: str
    num_waves: int = 6
    wave_size: int = 400
    wave_interval_s: float = 15.0
    disconnect_fraction: float = 0.2  # after a few chunks
    early_disconnect_fraction: float = 0.1  # after a short time, usually before any token
    slow_fraction: float = 0.2
    slow_pause_s: float = 3.0
    max_tokens: TokenRange = SHORT_GENERATIONS
    transports: tuple[str, ...] = ("sse", "ws")
    seed: int = 0
    grace_s: float = 10.0
    request_timeout_s: float = 600.0
    api_key: str | None = None
    show_progress: bool = True

    @property
    def num_connections(self) -> int:
        return self.num_waves * self.wave_size


@dataclass(slots=True)
class SoakResult:
    run: RunResult
    leaks: LeakCheck
    behaviours: dict[str, int]

    @property
    def is_clean(self) -> bool:
        return self.leaks.is_clean


def assign_behaviours(
    specs: list[RequestSpec], config: SoakConfig
) -> tuple[dict[int, ReadBehaviour], dict[str, int]]:
    """A seeded behaviour per request, and how many of each."""
    rng = random.Random(config.seed + 1)
    chosen: dict[int, ReadBehaviour] = {}
    counts = {"normal": 0, "disconnect": 0, "early_disconnect": 0, "slow": 0}
    cut_1 = config.disconnect_fraction
    cut_2 = cut_1 + config.early_disconnect_fraction
    cut_3 = cut_2 + config.slow_fraction
    for spec in specs:
        draw = rng.random()
        if draw < cut_1:
            chosen[spec.index] = ReadBehaviour(disconnect_after=rng.randint(1, spec.max_tokens))
            counts["disconnect"] += 1
        elif draw < cut_2:
            chosen[spec.index] = ReadBehaviour(disconnect_after_s=rng.uniform(0.05, 2.0))
            counts["early_disconnect"] += 1
        elif draw < cut_3:
            pause = rng.uniform(0.5, 1.0) * config.slow_pause_s
            chosen[spec.index] = ReadBehaviour(pause_after=rng.randint(1, 3), pause_s=pause)
            counts["slow"] += 1
        else:
            chosen[spec.index] = ReadBehaviour()
            counts["normal"] += 1
    return chosen, counts


async def run_soak(config: SoakConfig) -> SoakResult:
    specs = build_specs(
        config.num_connections,
        endpoint="chat",
        prompt_set="chat",
        max_tokens=config.max_tokens,
        seed=config.seed,
    )
    behaviours, counts = assign_behaviours(specs, config)
    options = SamplingOptions(model=config.model, temperature=0.0, ignore_eos=True)
    run_config = RunConfig(
        mode="waves",
        wave_size=config.wave_size,
        wave_interval_s=config.wave_interval_s,
        request_timeout_s=config.request_timeout_s,
        show_progress=config.show_progress,
        progress_label="soak",
    )
    async with open_transports(
        config.transports,
        config.url,
        options,
        api_key=config.api_key,
        max_connections=config.num_connections,
        reuse_connections=False,
    ) as transports:
        run = await run_workload(
            transports, specs, run_config, behaviour_of=lambda spec: behaviours[spec.index]
        )
    leaks = await wait_until_idle(config.url, config.grace_s, config.api_key)
    return SoakResult(run, leaks, counts)
