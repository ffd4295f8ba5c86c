"""`triode generate`: stream one completion to stdout from the synchronous engine.

No server and no trio: the LLMEngine step loop, printing each delta's text as it comes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from triode.engine.config import EngineConfig
from triode.engine.llm import apply_chat_template
from triode.engine.llm_engine import LLMEngine
from triode.engine.sampling.sampling_params import SamplingParams

_REQUEST_ID = "generate"


def run_generate(
    config: EngineConfig,
    prompt: str,
    *,
    max_tokens: int = 128,
    temperature: float = 0.0,
    seed: int | None = None,
    chat: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Generate for `prompt`, writing text to `out` as it is produced; a summary goes to `err`."""
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    except ValueError as exc:
        print(f"triode: error: {exc}", file=err)
        return 2
    engine = LLMEngine(config)
    tokenizer = engine.tokenizer
    if chat:
        ids = apply_chat_template(tokenizer, [{"role": "user", "content": prompt}])
    else:
        ids = tokenizer.encode(prompt)
    try:
        engine.add_request(_REQUEST_ID, ids, params)
    except ValueError as exc:
        print(f"triode: error: {exc}", file=err)
        return 2
    start = time.perf_counter()
    first_token_at: float | None = None
    num_tokens = 0
    finish_reason: str | None = None
    try:
        while engine.has_unfinished_requests():
            for delta in engine.step():
                if delta.error:
                    print(f"\ntriode: error: {delta.error}", file=err)
                    return 1
                if delta.token_ids and first_token_at is None:
                    first_token_at = time.perf_counter()
                num_tokens = delta.num_output_tokens
                out.write(delta.text)
                out.flush()
                finish_reason = delta.finish_reason or finish_reason
    except KeyboardInterrupt:
        engine.abort([_REQUEST_ID])
        print("\ntriode: interrupted", file=err)
        return 130
    out.write("\n")
    out.flush()
    elapsed = time.perf_counter() - start
    ttft = (first_token_at or start) - start
    rate = num_tokens / elapsed if elapsed > 0 else 0.0
    print(
        f"[{num_tokens} tokens, finish_reason={finish_reason}, first token {ttft * 1000:.0f} ms, "
        f"{rate:.1f} tok/s]",
        file=err,
    )
    return 0
