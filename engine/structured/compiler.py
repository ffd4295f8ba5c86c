"""GrammarCompiler: StructuredOutputsParams -> a compiled llguidance matcher, cached per spec.

llguidance (guidance-ai's Rust grammar engine: JSON schema, regex, Lark/GBNF, ~50 us per token
mask) does the work; this module turns our plain-data constraint into its grammar text, checks
it, and keeps compiled matchers in an LRU cache. A cached matcher is a *template*: it never
consumes a token; each request gets a `deep_copy` (about a microsecond).

Compiling can take from a millisecond to a second for huge schemas, so callers run it off the
event loop (the input processor's worker threads, `AsyncEngine.submit`'s thread); the cache is
thread-safe. Errors are `InvalidRequestError`s naming the offending field.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

from triode.engine.errors import InvalidRequestError
from triode.engine.sampling.structured_outputs import StructuredOutputsParams
from triode.engine.structured.json_schema import ascii_regex, check_json_schema, prepare_schema

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 256

# NOTE: JSON is generated compactly but readably ({"a": 1, "b": [2, 3]}): with free whitespace a
# small model can spend its whole budget on newlines between tokens the grammar allows anyway.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def json_schema_options(strict: bool) -> dict[str, Any]:
    """llguidance's JSON compile options (also used inside Lark `%json` blocks, as
    "x-guidance"): strict refuses keywords it cannot enforce, lenient ignores them."""
    return {**JSON_OPTIONS, "lenient": not strict}


def grammar_text(spec: StructuredOutputsParams, param: str) -> str:
    """llguidance's grammar for a constraint (raises InvalidRequestError for bad input)."""
    from llguidance import LLMatcher, grammar_from

    kind = spec.kind
    if kind in ("json", "json_object"):
        schema = spec.json if kind == "json" else {"type": "object"}
        check_json_schema(schema, param)
        return LLMatcher.grammar_from_json_schema(
            prepare_schema(schema), defaults=json_schema_options(spec.strict)
        )
    if kind == "regex":
        return LLMatcher.grammar_from_regex(ascii_regex(spec.regex or ""))
    if kind == "choice":
        # Each choice is a JSON-quoted literal (Lark in llguidance reads JSON string escapes).
        lark = "start: " + " | ".join(json.dumps(c) for c in spec.choice or ())
        return LLMatcher.grammar_from_lark(lark)
    try:
        return grammar_from("grammar", spec.grammar or "")  # Lark, or GBNF converted to Lark
    except Exception as exc:
        raise InvalidRequestError(f"{param}: {exc}", param) from None


class GrammarCompiler:
    """Compiles and caches matchers for one tokenizer and vocabulary.

    The llguidance tokenizer (~0.4 s to build from the Hugging Face one) is made on first use,
    so a server that never sees a constrained request never pays for it.

    NOTE: the Hugging Face tokenizer may be the engine's own: building reads it once (its JSON
    form, a shared borrow in the Rust binding), which is safe beside the step's decoding.
    """

    def __init__(
        self,
        hf_tokenizer: Any,
        vocab_size: int,
        eos_token_ids: list[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.cache_size = cache_size
        self._ll_tokenizer: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0  # cache misses that compiled (for tests and metrics)

    @property
    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                # n_vocab: the model's logits width (a model may pad its vocabulary).
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer,
                    n_vocab=max(self.vocab_size, len(self._hf_tokenizer)),
                    eos_token=list(self.eos_token_ids),
                )
            return self._ll_tokenizer

    def is_cached(self, spec: StructuredOutputsParams) -> bool:
        with self._lock:
            return spec.cache_key() in self._cache

    def compile(self, spec: StructuredOutputsParams, param: str | None = None) -> Any:
        """The template matcher for `spec` (from the cache when it is there). Errors name
        `param` (default: structured_outputs.<kind>), the request field the spec came from."""
        key = spec.cache_key()
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                return template
        template = self._build(spec, param or f"structured_outputs.{spec.kind}")
        with self._lock:
            self._cache[key] = template
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            self.num_compiled += 1
        return template

    def _build(self, spec: StructuredOutputsParams, param: str) -> Any:
        from llguidance import LLMatcher

        grammar = grammar_text(spec, param)
        # NOTE: the constructor drops the GIL while it builds the lexer and parser tables, and
        # never raises for a bad grammar: it enters an error state that we turn into a 400.
        matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"{param}: {_first_line(matcher.get_error())}", param)
        for warning in matcher.get_grammar_warnings():
            logger.debug("grammar warning for %s: %s", param, warning)
        return matcher


def _first_line(message: str, limit: int = 500) -> str:
    """llguidance's errors can quote the whole grammar; keep the useful start."""
    message = message.strip()
    return message if len(message) <= limit else message[:limit] + "..."
