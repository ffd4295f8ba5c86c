"""`python -m triode.load_tests fuzz`: thousands of hostile requests against a running server.

    python -m triode.load_tests fuzz --url http://127.0.0.1:8000 --count 5000

hypothesis generates the cases (load_tests/fuzz_cases.py) in a thread; `--concurrency` workers
send them over HTTP, the WebSocket and raw sockets while innocent streams (SSE and WebSocket)
run beside them. It fails (exit 1) on any 5xx (overload 503s aside), any 4xx or stream error
not in OpenAI's error shape, any request that does not finish within `--timeout`, any innocent
stream that does not complete with all its tokens, /health not 200 at the end, or a request or
KV block still held once the server is idle (/metrics). Findings on a known engine gap
(fuzz_cases.KNOWN_ENGINE_GAPS) are reported apart and fail the run too; `--skip-known-gaps`
leaves those cases out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import orjson
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from trio_websocket import ConnectionClosed, open_websocket_url

from triode.load_tests.fuzz_cases import Case, FuzzTarget, HttpCase, RawCase, WsCase, all_cases
from triode.load_tests.fuzz_checks import (
    ALLOWED_CLOSE_CODES,
    check_http,
    check_sse,
    check_ws_message,
    first_response,
)
from triode.load_tests.server_metrics import wait_until_idle

logger = logging.getLogger(__name__)

# A WebSocket case ends with this frame; the server's error about it means all were read.
WS_SENTINEL_TYPE = "fuzz.sentinel"
WS_SENTINEL = orjson.dumps({"type": WS_SENTINEL_TYPE}).decode()
# After that and after the last generation seen ended, how long to wait for anything further.
WS_QUIET_S = 0.1
# A raw case's client says EOF once the server has been quiet this long.
RAW_QUIET_S = 0.3
INNOCENT_TOKENS = 24
INNOCENT = {"prompt": "Once upon a time", "max_tokens": INNOCENT_TOKENS, "ignore_eos": True}


@dataclass
class FuzzConfig:
    url: str = "http://127.0.0.1:8000"
    count: int = 1000
    concurrency: int = 8
    timeout_s: float = 60.0
    vocab_size: int = 49152
    seed: int = 0
    include_known_gaps: bool = True
    api_key: str | None = None
    show_progress: bool = True


@dataclass
class Finding:
    label: str
    problems: list[str]
    case: Case
    known_gap: str | None


@dataclass
class FuzzReport:
    num_cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)  # total time per answer label
    findings: list[Finding] = field(default_factory=list)
    innocent_ok: int = 0
    innocent_failures: list[str] = field(default_factory=list)
    is_healthy: bool = False
    leaks: str = ""
    is_leak_free: bool = False
    elapsed_s: float = 0.0

    @property
    def is_clean(self) -> bool:
        return (
            not self.findings
            and not self.innocent_failures
            and self.innocent_ok > 0
            and self.is_healthy
            and self.is_leak_free
        )

    def describe(self) -> str:
        known = [f for f in self.findings if f.known_gap]
        lines = [
            f"{self.num_cases} hostile cases in {self.elapsed_s:.0f} s; answers (count, mean s): "
            + ", ".join(
                f"{k}: {v} ({self.seconds[k] / v:.2f})" for k, v in sorted(self.statuses.items())
            ),
            f"innocent streams: {self.innocent_ok} complete, {len(self.innocent_failures)} failed",
            f"/health at the end: {'200' if self.is_healthy else 'NOT 200'}; {self.leaks}",
            f"findings: {len(self.findings) - len(known)} new, {len(known)} on known gaps",
        ]
        for finding in self.findings[:20]:
            tag = f"KNOWN GAP ({finding.known_gap})" if finding.known_gap else "NEW"
            lines.append(f"  [{tag}] {finding.label}: {'; '.join(finding.problems)[:400]}")
            lines.append(f"      case: {_case_repr(finding.case)}")
        lines += [f"  innocent: {failure}" for failure in self.innocent_failures[:5]]
        lines.append("PASS" if self.is_clean else "FAIL")
        return "\n".join(lines)


# ---- one case -------------------------------------------------------------------------------
async def run_case(case: Case, url: str, client: httpx.AsyncClient, timeout_s: float) -> tuple[str, list[str]]:  # fmt: skip
    """Send one case; returns a short answer label (e.g. "HTTP 400") and the problems seen."""
    with trio.move_on_after(timeout_s) as scope:
        if isinstance(case, HttpCase):
            result = await _run_http(case, client)
        elif isinstance(case, WsCase):
            result = await _run_ws(case, url, client.headers)
        else:
            result = await _run_raw(case, url)
    if scope.cancelled_caught:
        return "hang", [f"no answer within {timeout_s:g} s"]
    return result


async def _run_http(case: HttpCase, client: httpx.AsyncClient) -> tuple[str, list[str]]:
    try:
        request = client.build_request(case.method, case.path, content=case.body, headers=list(case.headers))  # fmt: skip
        response = await client.send(request, stream=True)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
    except (httpx.LocalProtocolError, httpx.InvalidURL):
        return "not sent (client refused it)", []
    except httpx.HTTPError as exc:
        return "connection error", [f"{type(exc).__name__}: {exc}"]
    content_type = response.headers.get("content-type", "")
    return f"HTTP {response.status_code}", check_http(response.status_code, content_type, body, case.method)  # fmt: skip


async def _run_ws(case: WsCase, url: str, headers: httpx.Headers) -> tuple[str, list[str]]:
    ws_url = "ws" + url.removeprefix("http") + "/v1/ws"
    extra = [(k.encode(), v.encode()) for k, v in headers.items() if k.lower() == "authorization"]
    problems: list[str] = []
    open_ids: set[object] = set()
    is_sentinel_seen = False
    try:
        async with open_websocket_url(ws_url, extra_headers=extra) as ws:
            for frame in (*case.frames, WS_SENTINEL):
                if isinstance(frame, str):
                    try:
                        frame.encode()
                    except UnicodeEncodeError:  # a lone surrogate: not sendable as text
                        frame = frame.encode("utf-8", "surrogatepass")
                await ws.send_message(frame)
            while True:
                # The sentinel's error says every frame was read; then every generation seen
                # must end, and nothing more may come for a moment.
                is_waiting = not is_sentinel_seen or open_ids
                with trio.move_on_after(math.inf if is_waiting else WS_QUIET_S):
                    message = orjson.loads(await ws.get_message())
                    problems += check_ws_message(message)
                    kind, gen_id = message.get("type"), _hashable(message.get("id"))
                    if kind == "chunk":
                        open_ids.add(gen_id)
                    elif kind == "done" or (kind == "error" and gen_id is not None):
                        open_ids.discard(gen_id)
                    elif kind == "error" and WS_SENTINEL_TYPE in str(message):
                        is_sentinel_seen = True
                    continue
                break
    except ConnectionClosed as closed:
        code = closed.reason.code
        if code not in ALLOWED_CLOSE_CODES:
            problems.append(f"WebSocket closed with {code} {closed.reason.reason!r}")
        return f"ws closed {code}", problems
    except orjson.JSONDecodeError:
        return "ws", ["WebSocket message is not JSON"]
    except (OSError, trio.BrokenResourceError) as exc:
        return "ws connection error", [f"{type(exc).__name__}: {exc}"]
    return "ws ok", problems


async def _run_raw(case: RawCase, url: str) -> tuple[str, list[str]]:
    parts = urlsplit(url)
    try:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    except OSError as exc:
        return "connection error", [f"cannot connect: {exc}"]
    async with stream:
        data = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(case.data)
            # Read the answer before saying we are done: the server takes a client's EOF as a
            # disconnect (it aborts what is in flight), as it must for streams.
            is_closed = False
            while not is_closed:
                with trio.move_on_after(RAW_QUIET_S) as quiet:
                    chunk = await stream.receive_some(65536)
                    data += chunk
                    is_closed = not chunk
                if quiet.cancelled_caught:
                    break
            if not is_closed:
                await stream.send_eof()  # nothing more: the server must close, not wait
                while chunk := await stream.receive_some(65536):
                    data += chunk
    response = first_response(data)
    if response is None:
        return "raw: no HTTP answer", []
    status, content_type, body = response
    return f"raw HTTP {status}", check_http(status, content_type, body)


def _hashable(value: object) -> object:
    return orjson.dumps(value) if isinstance(value, list | dict) else value


def _case_repr(case: Case) -> str:
    if isinstance(case, HttpCase):
        text = f"{case.method} {case.path} {case.body!r}"
    elif isinstance(case, WsCase):
        text = f"ws frames {case.frames!r}"
    else:
        text = f"raw {case.data!r}"
    return text[:500]


# ---- innocent streams -----------------------------------------------------------------------
async def innocent_sse(client: httpx.AsyncClient, model: str) -> str | None:
    body = {**INNOCENT, "model": model, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        data = await response.aread()
    if response.status_code != 200:
        return f"SSE innocent: HTTP {response.status_code}: {data[:200]!r}"
    if problems := check_sse(data):
        return f"SSE innocent: {problems}"
    usage = orjson.loads([e for e in data.split(b"data: ") if b'"usage"' in e][-1])["usage"]
    if usage["completion_tokens"] != INNOCENT_TOKENS:
        return f"SSE innocent: {usage['completion_tokens']} tokens, not {INNOCENT_TOKENS}"
    return None


async def innocent_ws(url: str, model: str, headers: httpx.Headers) -> str | None:
    ws_url = "ws" + url.removeprefix("http") + "/v1/ws"
    extra = [(k.encode(), v.encode()) for k, v in headers.items() if k.lower() == "authorization"]
    async with open_websocket_url(ws_url, extra_headers=extra) as ws:
        request = {"type": "completion", "id": "innocent", "request": {**INNOCENT, "model": model}}
        await ws.send_message(orjson.dumps(request).decode())
        while (message := orjson.loads(await ws.get_message()))["type"] == "chunk":
            pass
    if message["type"] != "done" or message["usage"]["completion_tokens"] != INNOCENT_TOKENS:
        return f"WebSocket innocent ended with {str(message)[:300]}"
    return None


async def innocent_streams(url: str, model: str, client: httpx.AsyncClient, report: FuzzReport, done: trio.Event) -> None:  # fmt: skip
    """Run innocent streams back to back until `done`; each must complete untouched."""
    while not done.is_set():
        for attempt in (innocent_sse(client, model), innocent_ws(url, model, client.headers)):
            try:
                failure = await attempt
            except Exception as exc:
                failure = f"innocent stream raised {type(exc).__name__}: {exc}"
            if failure is None:
                report.innocent_ok += 1
            else:
                report.innocent_failures.append(failure)


# ---- the run --------------------------------------------------------------------------------
def generate_cases(target: FuzzTarget, count: int, seed_value: int, send: trio.MemorySendChannel[Case]) -> None:  # fmt: skip
    """In a worker thread: hypothesis draws `count` cases and hands each to the trio side."""

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(all_cases(target))
    def draw(case: Case) -> None:
        trio.from_thread.run(send.send, case)

    with contextlib.suppress(trio.BrokenResourceError):
        draw()
    trio.from_thread.run(send.aclose)


async def discover_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def run_fuzz(config: FuzzConfig) -> FuzzReport:
    report = FuzzReport()
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    start = time.monotonic()
    limits = httpx.Limits(max_connections=config.concurrency + 4)
    async with httpx.AsyncClient(base_url=config.url, headers=headers, timeout=config.timeout_s, limits=limits) as client:  # fmt: skip
        model = await discover_model(client)
        target = FuzzTarget(model, config.vocab_size, config.include_known_gaps)
        send, receive = trio.open_memory_channel[Case](config.concurrency * 2)
        fuzz_done = trio.Event()

        async def worker() -> None:
            async for case in receive:
                started = time.monotonic()
                label, problems = await run_case(case, config.url, client, config.timeout_s)
                report.num_cases += 1
                report.statuses[label] += 1
                report.seconds[label] += time.monotonic() - started
                if problems:
                    report.findings.append(Finding(case.label, problems, case, case.known_gap))
                if config.show_progress and report.num_cases % 250 == 0:
                    logger.info("%d cases, %d findings", report.num_cases, len(report.findings))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent_streams, config.url, model, client, report, fuzz_done)
            async with trio.open_nursery() as workers:
                for _ in range(config.concurrency):
                    workers.start_soon(worker)
                workers.start_soon(
                    trio.to_thread.run_sync, generate_cases, target, config.count, config.seed, send
                )
            fuzz_done.set()
        health = await client.get("/health")
        report.is_healthy = health.status_code == 200
    check = await wait_until_idle(config.url, grace_s=15.0, api_key=config.api_key)
    report.leaks, report.is_leak_free = check.describe(), check.is_clean
    report.elapsed_s = time.monotonic() - start
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m triode.load_tests fuzz", description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--url", default=FuzzConfig.url)
    parser.add_argument("--count", type=int, default=FuzzConfig.count, help="hostile cases to send")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=FuzzConfig.concurrency)
    parser.add_argument("--timeout", type=float, default=FuzzConfig.timeout_s, help="seconds one case may take")  # fmt: skip
    parser.add_argument("--vocab-size", type=int, default=FuzzConfig.vocab_size)
    parser.add_argument("--seed", type=int, default=FuzzConfig.seed)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--skip-known-gaps", action="store_true", help="leave out cases on known engine gaps")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = FuzzConfig(
        url=args.url.rstrip("/"),
        count=args.count,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        vocab_size=args.vocab_size,
        seed=args.seed,
        include_known_gaps=not args.skip_known_gaps,
        api_key=args.api_key,
        show_progress=not args.no_progress,
    )
    report = trio.run(run_fuzz, config)
    print(report.describe())
    return 0 if report.is_clean else 1
