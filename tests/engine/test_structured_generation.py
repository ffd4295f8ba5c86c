"""Constrained decoding and logit controls on the real SmolLM2, offline (`LLM`).

Parity: greedy constrained output equals transformers' `generate()` on the same weights with an
independent logits processor that masks with its own llguidance matcher (ties handled as in
test_hf_parity), in one batch that mixes every constraint kind with an unconstrained request,
under a KV pool small enough to force chunked prefill and preemption.
"""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch

from tests.engine.test_hf_parity import assert_agrees
from triode.engine import LLM, SamplingParams
from triode.engine.errors import InvalidRequestError
from triode.engine.llm import apply_chat_template
from triode.engine.sampling.structured_outputs import StructuredOutputsParams as Spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EOS = 2
MAX_TOKENS = 40
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
    },
    "required": ["name", "age", "city"],
}
ORDER = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "pattern": r"^[A-Z]{2}\d{2}$"}},
                "required": ["sku"],
            },
            "minItems": 1,
            "maxItems": 2,
        },
        "express": {"type": "boolean"},
    },
    "required": ["items"],
}
CASES = [
    ("Describe a person from France as JSON.", Spec(json=PERSON)),
    ("Write an order with one item as JSON.", Spec(json=ORDER)),
    ("Give me a JSON object about cats.", Spec(json_object=True)),
    ("Is the sky blue? Answer yes or no.", Spec(choice=["yes", "no"])),
    ("What is a phone number format?", Spec(regex=r"\d{3}-\d{4}")),
    ("What is the capital of France?", None),
]


def chat_ids(tokenizer, question: str) -> list[int]:
    return apply_chat_template(tokenizer, [{"role": "user", "content": question}])


@pytest.fixture(scope="module")
def llm():
    # 12 blocks of 16 tokens for six ~70-token sequences: chunked prefill and preemption.
    # Float weights: compared token for token with transformers' float32 model.
    return LLM(max_num_batched_tokens=48, num_kv_blocks=12, num_threads=2, quantization="none")


def reference_generate(bundled_folder, compiler, prompts, specs):
    """transformers' greedy tokens and processed scores, masked by fresh llguidance matchers."""
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    class GrammarMask(LogitsProcessor):
        def __init__(self, matcher, prompt_len: int) -> None:
            self.matcher, self.prompt_len, self.fed = matcher, prompt_len, 0

        def __call__(self, input_ids, scores):
            generated = input_ids[0, self.prompt_len :].tolist()
            for token in generated[self.fed :]:
                assert self.matcher.consume_token(token)
            self.fed = len(generated)
            words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.int32)
            bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: scores.shape[1]]
            return scores.masked_fill(torch.from_numpy(bits == 0)[None, :], float("-inf"))

    model = AutoModelForCausalLM.from_pretrained(str(bundled_folder), dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for prompt, spec in zip(prompts, specs):
            processors = LogitsProcessorList()
            if spec is not None:
                processors.append(GrammarMask(compiler.compile(spec).deep_copy(), len(prompt)))
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                logits_processor=processors,
                output_scores=True,
                return_dict_in_generate=True,
                eos_token_id=EOS,
                pad_token_id=EOS,
            )
            results.append((out.sequences[0, len(prompt) :].tolist(), [s[0] for s in out.scores]))
    return results


def check_text(spec: Spec | None, text: str) -> None:
    if spec is None:
        return
    if spec.kind == "json":
        jsonschema.validate(json.loads(text), spec.json)
    elif spec.kind == "json_object":
        assert isinstance(json.loads(text), dict)
    elif spec.kind == "choice":
        assert text in spec.choice
    elif spec.kind == "regex":
        assert re.fullmatch(spec.regex, text, re.ASCII), text


def test_every_constraint_kind_matches_transformers_with_a_grammar_mask(llm, bundled_folder):
    tokenizer = llm.get_tokenizer()
    prompts = [chat_ids(tokenizer, q) for q, _ in CASES]
    specs = [spec for _, spec in CASES]
    params = [
        SamplingParams(temperature=0, max_tokens=MAX_TOKENS, structured_outputs=s) for s in specs
    ]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    finished = 0
    for out, spec in zip(outs, specs):
        completion = out.outputs[0]
        if completion.finish_reason == "stop":
            finished += 1
            assert completion.token_ids[-1] == EOS  # a finished grammar forces EOS
            check_text(spec, completion.text)
    assert finished >= len(CASES) - 1, [o.outputs[0] for o in outs]

    reference = reference_generate(bundled_folder, llm.engine.structured.compiler, prompts, specs)
    verdicts = [assert_agrees(o.outputs[0].token_ids, *ref) for o, ref in zip(outs, reference)]
    assert verdicts.count("equal") >= len(CASES) - 1, verdicts
    assert llm.engine.structured.num_tracked == 0 or not llm.engine.has_unfinished_requests()


def france(llm, params: list[SamplingParams]) -> list[list[int]]:
    """Greedy answers to one question under several parameter sets, in one batch."""
    prompt = {"prompt_token_ids": chat_ids(llm.get_tokenizer(), "What is the capital of France?")}
    outs = llm.generate([prompt] * len(params), params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def plain_answer(llm) -> list[int]:
    (tokens,) = france(llm, [SamplingParams(temperature=0, max_tokens=10)])
    assert "Paris" in llm.get_tokenizer().decode(tokens)
    return tokens


def test_logit_controls_change_greedy_answers(llm, plain_answer):
    tokenizer = llm.get_tokenizer()
    banned = plain_answer[0]
    favourite = tokenizer.encode(" banana")[0]
    allowed = tokenizer.encode(" yes no Yes No")
    minus, plus, no_paris, only_allowed = france(
        llm,
        [
            SamplingParams(temperature=0, max_tokens=6, logit_bias={banned: -100}),
            SamplingParams(temperature=0, max_tokens=4, logit_bias={favourite: 100}),
            SamplingParams(temperature=0, max_tokens=10, bad_words=["Paris"]),
            SamplingParams(temperature=0, max_tokens=4, allowed_token_ids=allowed),
        ],
    )
    assert banned not in minus  # -100: never
    assert plus == [favourite] * 4  # +100: greedy takes it every time
    assert "Paris" not in tokenizer.decode(no_paris)
    assert set(only_allowed) <= set(allowed)


def test_parallel_samples_each_follow_the_grammar(llm):
    tokenizer = llm.get_tokenizer()
    prompt = {"prompt_token_ids": chat_ids(tokenizer, "Pick a colour.")}
    spec = Spec(choice=["red", "green", "blue", "ochre"])
    params = SamplingParams(n=4, temperature=1.5, seed=3, max_tokens=8, structured_outputs=spec)
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    assert all(o.text in spec.choice and o.finish_reason == "stop" for o in out.outputs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"logit_bias": {49152: 1}}, "logit_bias"),
        ({"allowed_token_ids": [3, 10**9]}, "allowed_token_ids"),
        ({"stop_token_ids": [49152]}, "stop_token_ids"),
        ({"structured_outputs": Spec(json={"type": "nope"})}, "structured_outputs.json"),
        ({"structured_outputs": Spec(regex="[")}, "structured_outputs.regex"),
    ],
)
def test_bad_ids_and_constraints_are_refused_before_any_tensor(llm, kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        llm.engine.add_request("bad", [1, 2, 3], SamplingParams(**kwargs))
    assert info.value.param == param
    assert not llm.engine.has_unfinished_requests()
