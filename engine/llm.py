"""The offline API, shaped like vLLM's: `LLM(...).generate(prompts, params)` and `.chat(...)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from triode.engine.chat_template import render_chat
from triode.engine.config import EngineConfig
from triode.engine.input_processor import encode_text
from triode.engine.llm_engine import LLMEngine
from triode.engine.outputs import CompletionOutput, RequestOutput
from triode.engine.sampling.sampling_params import SamplingParams

PromptType = str | dict[str, Any]


class LLM:
    """An engine for batch generation in-process.

    `LLM()` serves the bundled SmolLM2-135M-Instruct; `LLM(model=path, **options)` anything else,
    with the EngineConfig fields as keyword arguments (e.g. `max_num_batched_tokens=64`).
    """

    def __init__(self, model: str | None = None, **options: Any) -> None:
        self.engine = LLMEngine(EngineConfig.from_kwargs(model=model, **options))
        self._ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (a string, or {"prompt_token_ids": [...]}), all batched
        together; results come back in the order of the prompts."""
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError("need one SamplingParams per prompt (or a single one)")
        tokenizer = self.engine.tokenizer
        results: dict[str, RequestOutput] = {}
        order: list[str] = []
        for i, (prompt, params) in enumerate(zip(prompts, params_list)):
            if isinstance(prompt, str):
                ids = tokenizer.encode(prompt, add_special_tokens=False)
                text: str | None = prompt
            elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
                text = prompt.get("prompt")
            else:
                raise TypeError("a prompt is a string or a dict with 'prompt_token_ids'")
            request_id = str(next(self._ids))
            self.engine.add_request(
                request_id, ids, params, priority=priority[i] if priority else 0
            )
            results[request_id] = RequestOutput(
                request_id, text, ids, [CompletionOutput(j) for j in range(params.n)]
            )
            order.append(request_id)
        self._run(results, use_tqdm)
        return [results[r] for r in order]

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate.
        `tools` (OpenAI's shape) are rendered into the prompt (see engine.chat_template);
        `chat_template_kwargs` reach the template as extra variables."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts: list[PromptType] = []
        for conversation in conversations:
            text = render_chat(
                self.engine.tokenizer,
                conversation,  # type: ignore[arg-type]
                add_generation_prompt,
                tools=tools,
                chat_template_kwargs=chat_template_kwargs,
            )
            ids = encode_text(self.engine.tokenizer, text, add_special_tokens=False)
            prompts.append({"prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, results: dict[str, RequestOutput], use_tqdm: bool) -> None:
        progress = None
        if use_tqdm and len(results) > 1:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(results), desc="generating", unit="req", dynamic_ncols=True)
        num_done = 0
        try:
            while self.engine.has_unfinished_requests():
                for delta in self.engine.step():
                    out = results[delta.request_id]
                    out.add(delta)
                    if delta.error:
                        raise RuntimeError(delta.error)
                    if progress is not None and delta.is_finished and out.finished:
                        num_done += 1
                        progress.update(1)
        finally:
            if progress is not None:
                progress.close()
            # An exception (or Ctrl-C) must not leave requests holding KV blocks.
            self.engine.abort(list(results))


def apply_chat_template(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template."""
    text = render_chat(tokenizer, messages, add_generation_prompt)
    return encode_text(tokenizer, text, add_special_tokens=False)
