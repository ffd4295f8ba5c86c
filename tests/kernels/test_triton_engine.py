"""The whole engine with the Triton backend gives the torch backend's greedy tokens."""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_llama
from triode.engine import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("triton_kernels")

SHARED = list(range(300, 340))
PROMPTS = [
    [5, 9, 200, 31],
    list(range(1000, 1037)),
    [17],
    # Two prompts sharing a 40-token prefix: the second hits the prefix cache and prefills on
    # top of cached context.
    [*SHARED, 7, 8],
    [*SHARED, 11, 12, 13],
]


def greedy_tokens(folder, backend: str, **options) -> list[list[int]]:
    llm = LLM(model=str(folder), attention_backend=backend, **options)
    assert llm.engine.runner.attention.name == backend
    params = SamplingParams(temperature=0, max_tokens=8, min_tokens=8)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize(
    "model,options",
    [
        # The shared tiny model (head_dim 16, GQA 2); a 16-token budget chunks the prompts.
        (None, dict(block_size=16, max_num_batched_tokens=16)),
        # head_dim 64, GQA 4, blocks of 32.
        (
            dict(head_dim=64, num_heads=4, num_kv_heads=1),
            dict(block_size=32, max_num_batched_tokens=24),
        ),
    ],
    ids=["tiny-d16-gqa2", "d64-gqa4-block32"],
)
def test_triton_backend_matches_torch_backend(
    tmp_path, tiny_folder, bundled_folder, model, options
):
    folder = (
        tiny_folder if model is None else make_tiny_llama(tmp_path / "m", bundled_folder, **model)
    )
    options = dict(num_kv_blocks=64, **options)
    expected = greedy_tokens(folder, "torch", **options)
    assert all(len(t) == 8 for t in expected)
    assert greedy_tokens(folder, "triton", **options) == expected
