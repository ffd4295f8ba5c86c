"""The TTFT a Responses API follow-up turn saves by reusing the previous turn's KV, in one run.

    python -m triode.load_tests.responses_ttft [--chains 5] [--document-tokens 1200]

Two `triode serve` subprocesses with the same model: one with prefix caching (the default),
one with `--no-enable-prefix-caching`. On each, the same chains run one after another: turn 1
sends a long document and a question; turns 2 and 3 send only a short question and
`previous_response_id`, streamed, and their time to the first `response.output_text.delta` is
measured. With the cache, a follow-up prefills only its new tokens; without it, the whole
conversation again. Prints a JSON summary (median TTFT per turn and server, the ratio, the
cached token counts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import trio
from httpx_sse import EventSource

from triode.load_tests.servers import free_port, running_server, triode_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = ("Summarize the document in one sentence.", "Which rule mentions team 3?",
             "What is the longest deadline?")  # fmt: skip


def document(num_words: int) -> str:
    """Deterministic policy-like text (about 1.3 tokens a word with SmolLM2's tokenizer)."""
    lines, i = [], 0
    while sum(len(line.split()) for line in lines) < num_words:
        lines.append(
            f"Rule {i + 1}: requests of category {i % 7} are handled by team {i % 5} within "
            f"{(i * 3) % 11 + 1} business days; exceptions go to ledger {i}."
        )
        i += 1
    return "\n".join(lines)


async def turn(client: httpx.AsyncClient, body: dict) -> tuple[float, dict]:
    """Stream one turn: (seconds to the first text delta, the final Response)."""
    start = time.perf_counter()
    first: float | None = None
    final: dict = {}
    async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for event in EventSource(response).aiter_sse():
            data = json.loads(event.data)
            if data["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - start
            if data["type"] in ("response.completed", "response.incomplete"):
                final = data["response"]
    assert first is not None, "no text was streamed"
    return first, final


async def run_chains(url: str, chains: int, doc: str, max_tokens: int) -> dict:
    ttfts: dict[int, list[float]] = {1: [], 2: [], 3: []}
    cached: dict[int, list[int]] = {1: [], 2: [], 3: []}
    sampling = {"temperature": 0, "max_output_tokens": max_tokens, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await turn(client, {"input": "Hello", **sampling})  # warm-up
        for chain in range(chains):
            previous = None
            for number, question in enumerate(QUESTIONS, start=1):
                text = f"Document {chain}:\n{doc}\n\n{question}" if number == 1 else question
                body = {"input": text, "previous_response_id": previous, **sampling}
                seconds, response = await turn(client, body)
                previous = response["id"]
                ttfts[number].append(seconds)
                usage = response["usage"]
                cached[number].append(usage["input_tokens_details"]["cached_tokens"])
                if chain == 0:
                    print(f"  {url} turn {number}: {usage['input_tokens']} input tokens")
    return {
        "ttft_median_s": {n: statistics.median(v) for n, v in ttfts.items()},
        "cached_tokens_median": {n: statistics.median(v) for n, v in cached.items()},
    }


async def main(args: argparse.Namespace) -> dict:
    doc = document(args.document_words)
    results = {}
    for name, extra in (("prefix_cache", []), ("no_prefix_cache", ["--no-enable-prefix-caching"])):
        command = triode_command(free_port(), "--stats-log-interval-s", "0", *extra)
        async with running_server(command, Path(args.log_dir) / name) as url:
            print(f"{name}: {url}")
            results[name] = await run_chains(url, args.chains, doc, args.max_tokens)
    on, off = results["prefix_cache"], results["no_prefix_cache"]
    results["follow_up_ttft_speedup"] = {
        n: off["ttft_median_s"][n] / on["ttft_median_s"][n] for n in (2, 3)
    }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=5)
    parser.add_argument("--document-words", type=int, default=900)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--log-dir", default="artifacts/responses_ttft", help="server logs")
    print(json.dumps(trio.run(main, parser.parse_args()), indent=2))
