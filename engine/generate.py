"""`triode generate`: stream one completion to stdout from the synchronous engine.

No server and no trio: the LLMEngine step loop, printing each delta's text as it comes. The
`triode` command line (web/cli.py) parses `GenerateOptions` and an EngineConfig, then calls
`run_generate`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from triode.engine.config import EngineConfig
from triode.engine.errors import InvalidRequestError
from triode.engine.input_processor import encode_text, render_chat
from triode.engine.sampling.sampling_params import SamplingParams

_REQUEST_ID = "generate"


@dataclass
class GenerateOptions:
    """What to generate (the engine's options follow)."""

    max_tokens: int = 128
    """Tokens to generate, at most."""
    temperature: float = 0.0
    """Sampling temperature; 0 always picks the most likely token. The engine's --seed makes
    sampled output repeatable."""
    chat: bool = False
    """Send the prompt as a user message through the model's chat template."""


def run_generate(
    config: EngineConfig,
    prompt: str,
    options: GenerateOptions | None = None,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Generate for `prompt`, writing text to `out` as it is produced; a summary goes to `err`.
    Returns the exit status (2 for a request the engine refuses)."""
    options = options or GenerateOptions()
    try:
        params = SamplingParams(
            max_tokens=options.max_tokens, temperature=options.temperature, seed=config.seed
        )
    except InvalidRequestError as exc:
        print(f"triode: error: {exc}", file=err)
        return 2
    from triode.engine.llm_engine import LLMEngine  # torch: only once there is work

    engine = LLMEngine(config)
    tokenizer = engine.tokenizer
    try:
        if options.chat:
            text = render_chat(tokenizer, [{"role": "user", "content": prompt}])
            ids = encode_text(tokenizer, text, add_special_tokens=False)
        else:
            ids = encode_text(tokenizer, prompt)
        engine.add_request(_REQUEST_ID, ids, params)
    except InvalidRequestError as exc:
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
