"""The input processor: chat templating, tokenization and validation, off the event loop.

A request body may be 16 MiB; tokenizing it takes seconds. So this work runs in worker threads
(`trio.to_thread`), each with a tokenizer instance of its own: Hugging Face's fast tokenizers
are not safe to share across threads (a concurrent call fails with "Already borrowed").
`InputProcessor.run(fn)` lends one `Preprocessor` (a tokenizer + the model description) to
`fn` in a worker thread; callers put everything a request needs there, once: parsing,
templating, tokenizing and `make_engine_input`.

    engine_input = await processor.run(lambda p: p.make_input(p.encode("Hi"), params))

A `Preprocessor` is plain synchronous code, so offline callers use it directly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from triode.engine.chat_template import render_chat
from triode.engine.errors import ContextLengthError
from triode.engine.inputs import EngineInput, ModelInfo, make_engine_input
from triode.engine.sampling.logit_controls import resolve_bad_words
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.sampling.structured_outputs import StructuredOutputsParams
from triode.engine.structured.compiler import GrammarCompiler

T = TypeVar("T")

_TOKEN_TEXT_CACHE_SIZE = 1 << 16


def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def encode_text(
    tokenizer: Any, text: str, add_special_tokens: bool = True, limit: int | None = None
) -> list[int]:
    """Token ids of `text`. With `limit`, a text of `limit` tokens or more raises
    ContextLengthError before its ids become a Python list.

    NOTE: the fast tokenizer's `encode_batch*` releases the GIL while it works (plain `encode`
    holds it for seconds on a long text); only turning the ids into a list holds it again,
    about 40 ms per million tokens, which the limit avoids for texts that cannot fit anyway.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode_batch = getattr(backend, "encode_batch_fast", None) or getattr(
        backend, "encode_batch", None
    )
    if encode_batch is None:  # a slow (pure Python) tokenizer
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        _check_length(len(ids), limit)
        return ids
    encoding = encode_batch([text], add_special_tokens=add_special_tokens)[0]
    _check_length(len(encoding), limit)
    return encoding.ids


def _check_length(num_tokens: int, limit: int | None) -> None:
    if limit is not None and num_tokens >= limit:
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"has {num_tokens} tokens, which leaves no room for a completion. Please reduce "
            "the length of the prompt.",
            param="prompt",
        )


class Preprocessor:
    """One worker's tools: a private tokenizer, the model description and the (shared,
    thread-safe) grammar compiler. Synchronous; never share one between threads."""

    def __init__(
        self, info: ModelInfo, tokenizer: Any, compiler: GrammarCompiler | None = None
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.compiler = compiler or GrammarCompiler(
            tokenizer, info.vocab_size, list(info.eos_token_ids)
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt text; ContextLengthError if it cannot fit the context."""
        return encode_text(self.tokenizer, text, add_special_tokens, self.info.max_model_len)

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        **options: Any,
    ) -> list[int]:
        """Token ids of a conversation rendered with the chat template (the template adds the
        special tokens itself); `options`: render_chat's tools, tool_format and
        chat_template_kwargs."""
        text = render_chat(self.tokenizer, messages, add_generation_prompt, **options)
        return self.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """The vocabulary entries of the ids (as /tokenize's `token_strs`)."""
        return self.tokenizer.convert_ids_to_tokens(token_ids)

    @property
    def num_tokenizer_tokens(self) -> int:
        """Ids the tokenizer can decode: [0, this). May differ from the model's vocab_size."""
        return len(self.tokenizer)

    def compile_structured(self, spec: StructuredOutputsParams, param: str | None = None) -> None:
        """Compile a constraint (or find it cached); InvalidRequestError names `param`. The
        engine's step later takes the compiled matcher from the same cache."""
        self.compiler.compile(spec, param)

    def make_input(
        self, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
    ) -> EngineInput:
        """The one check of a prompt against the model (see `make_engine_input`); bad words
        become token ids and a constraint is compiled here, off the event loop."""
        params = resolve_bad_words(self.tokenizer, params)
        engine_input = make_engine_input(self.info, prompt_token_ids, params, priority)
        if params.structured_outputs is not None:
            self.compile_structured(params.structured_outputs)
        return engine_input


class InputProcessor:
    """Lends `Preprocessor`s to work run in worker threads, at most `num_workers` at a time.

    Build it in a thread (it loads `num_workers + 1` tokenizers, ~0.1 s each): the extra one
    serves `token_text`, the only tokenizer call made on the event loop (one id, memoised).
    """

    def __init__(
        self,
        info: ModelInfo,
        num_workers: int = 2,
        tokenizer: Any | None = None,
        compiler: GrammarCompiler | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        first = tokenizer if tokenizer is not None else load_tokenizer(info.folder)
        # NOTE: the engine's compiler when it runs in this process, so that what the workers
        # compile to validate a request is what the step finds in the cache.
        compiler = compiler or GrammarCompiler(
            copy.deepcopy(first), info.vocab_size, list(info.eos_token_ids)
        )
        self.compiler = compiler
        # NOTE: copies, not the caller's instance: the engine's own tokenizer is used by its
        # step thread, and no two threads may use one instance.
        self._idle = [
            Preprocessor(info, copy.deepcopy(first), compiler) for _ in range(num_workers)
        ]
        self._loop_tokenizer = copy.deepcopy(first)
        self._limiter = trio.CapacityLimiter(num_workers)
        self._token_texts: dict[int, str] = {}
        self.info = info
        self.num_workers = num_workers

    async def run(self, fn: Callable[[Preprocessor], T]) -> T:
        """`fn(preprocessor)` in a worker thread; returns its result or raises its exception.

        NOTE: not abandoned on cancellation: a cancelled caller waits for `fn` to finish, so a
        tokenizer is never handed to a second thread while the first still uses it.
        """
        async with self._limiter:
            worker = self._idle.pop()
            try:
                return await trio.to_thread.run_sync(fn, worker)
            finally:
                self._idle.append(worker)

    async def process(
        self, prompt: str | list[int], params: SamplingParams, priority: int = 0
    ) -> EngineInput:
        """A prompt text (tokenized with special tokens) or token ids, checked: ready for
        `AsyncEngine.submit`."""
        if isinstance(prompt, str):
            return await self.run(lambda p: p.make_input(p.encode(prompt), params, priority))
        return await self.run(lambda p: p.make_input(list(prompt), params, priority))

    async def process_chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams,
        priority: int = 0,
        add_generation_prompt: bool = True,
    ) -> EngineInput:
        """A conversation rendered with the chat template, tokenized and checked."""

        def work(p: Preprocessor) -> EngineInput:
            return p.make_input(p.encode_chat(messages, add_generation_prompt), params, priority)

        return await self.run(work)

    def token_text(self, token_id: int) -> str:
        """The text of one token (for logprobs), memoised: the same ids recur constantly."""
        text = self._token_texts.get(token_id)
        if text is None:
            if len(self._token_texts) >= _TOKEN_TEXT_CACHE_SIZE:
                self._token_texts.clear()
            text = self._loop_tokenizer.decode([token_id])
            self._token_texts[token_id] = text
        return text
