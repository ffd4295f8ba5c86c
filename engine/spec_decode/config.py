"""SpeculativeConfig: what `--speculative-config` / `LLM(speculative_config=...)` says, checked.

Spelled as vLLM spells it: `{"method": "ngram", "num_speculative_tokens": 4,
"prompt_lookup_min": 2, "prompt_lookup_max": 4}` or `{"method": "draft_model", "model": PATH,
"num_speculative_tokens": 4}`, plus `disable_by_batch_size` (vLLM's name): speculation pauses
while that many requests or more are running or waiting, where verifying drafts costs the batch
more than it saves (`load_tests/spec_bench.py --part crossover` measures where).

A draft model also takes `quantization` (its weights, as `--quantization` spells them; default:
the served model's setting, so `--quantization int4` quantizes the draft too, and a draft of
the served model's own folder with `"quantization": "int4"` is a cheap copy of it) and
`draft_num_kv_blocks` (its own KV cache; default: room for `disable_by_batch_size` sequences of
the full context length, capped at the served model's pool).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from triode.engine.config import QUANTIZATIONS

METHODS = ("ngram", "draft_model")

# NOTE: measured (BENCHMARKS.md, issue 16; `python -m triode.load_tests.spec_bench --part
# crossover`): on 2 cores n-gram speculation on chat prompts pays at 1-2 running requests
# (1.15x, 1.39x) and costs from 4 (0.96x, 0.92x at 8, 0.86x at 16), since a rejected draft's
# verification rows are paid by the whole batch; copy-heavy prompts still gain at 16.
DEFAULT_DISABLE_BY_BATCH_SIZE = 4


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    model: str | None = None  # the draft model (method "draft_model")
    disable_by_batch_size: int = DEFAULT_DISABLE_BY_BATCH_SIZE
    quantization: str | None = None  # the draft's weights; None: the served model's setting
    draft_num_kv_blocks: int | None = None  # the draft's KV blocks; None: derived at start

    def __post_init__(self) -> None:
        def bad(message: str, key: str) -> ValueError:
            return ValueError(f"speculative_config: {message}")

        if self.method not in METHODS:
            raise bad(f"method must be one of {METHODS}, got {self.method!r}", "method")
        if not _is_int(self.num_speculative_tokens) or not 1 <= self.num_speculative_tokens <= 32:
            raise bad(
                f"num_speculative_tokens must be in [1, 32], got {self.num_speculative_tokens!r}",
                "num_speculative_tokens",
            )
        if not _is_int(self.prompt_lookup_min) or self.prompt_lookup_min < 1:
            raise bad(
                f"prompt_lookup_min must be >= 1, got {self.prompt_lookup_min!r}",
                "prompt_lookup_min",
            )
        if not _is_int(self.prompt_lookup_max) or self.prompt_lookup_max < self.prompt_lookup_min:
            raise bad(
                f"prompt_lookup_max must be >= prompt_lookup_min, got {self.prompt_lookup_max!r}",
                "prompt_lookup_max",
            )
        if not _is_int(self.disable_by_batch_size) or self.disable_by_batch_size < 1:
            raise bad(
                f"disable_by_batch_size must be >= 1, got {self.disable_by_batch_size!r}",
                "disable_by_batch_size",
            )
        if self.method == "draft_model" and not self.model:
            raise bad('method "draft_model" needs "model" (a folder or .gguf file)', "model")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise bad(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}",
                "quantization",
            )
        if self.draft_num_kv_blocks is not None and (
            not _is_int(self.draft_num_kv_blocks) or self.draft_num_kv_blocks < 1
        ):
            raise bad(
                f"draft_num_kv_blocks must be >= 1, got {self.draft_num_kv_blocks!r}",
                "draft_num_kv_blocks",
            )
        if self.method != "draft_model" and (
            self.quantization is not None or self.draft_num_kv_blocks is not None
        ):
            raise bad('"quantization" and "draft_num_kv_blocks" are for a draft model', "method")

    @classmethod
    def parse(cls, value: str | dict[str, Any]) -> SpeculativeConfig:
        """From the JSON text of `--speculative-config` or the dict given to LLM(...)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"speculative_config is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("speculative_config must be a JSON object")
        value = dict(value)
        if value.get("method") is None and value.get("model"):
            value["method"] = "draft_model"
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"speculative_config: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**value)

    def to_json(self) -> str:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return json.dumps({k: v for k, v in fields.items() if v is not None})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
