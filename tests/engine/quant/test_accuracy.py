"""Accuracy of quantized serving on the real bundled model: teacher-forced over a bundled text,
against transformers' float32 model de-quantized from the same GGUF file (it holds exactly the
numbers the file encodes): top-1 agreement and perplexity.

The issue's bars run over 2,048 tokens: the file as it is quantized, through the dense bf16
path that prompt chunks take, and int8 on the fly. The direct kernel's float32 path is closer
still, and is checked on a shorter prefix, as is its integer dot-product path (the small-step
kernel where the CPU has AVX512-VNNI) forced onto every step. int4 on the fly and bf16 float weights are checked on
the first 512 tokens (the reference is causal, so its prefix scores are the same numbers), to
keep the file within its time budget on 2 cores.
"""

from __future__ import annotations

import pytest

from tests.engine.quant.scoring import compare, score_engine, score_transformers, text_ids
from triode.engine.quant.linear import QuantLinear
from triode.kernels import cpu_quant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler"),
]

LONG = 2048
SHORT = 512


@pytest.fixture(scope="module")
def ids(tokenizer) -> list[int]:
    ids = text_ids(tokenizer)
    assert len(ids) >= LONG
    return ids[:LONG]


@pytest.fixture(scope="module")
def reference(bundled_folder, ids):
    return score_transformers(bundled_folder, ids)


def measure(bundled_folder, ids, reference, length: int, chunk: int, prepare=None, **options):
    tops, logprobs, runner = score_engine(bundled_folder, ids[:length], chunk, prepare, **options)
    ref = (reference[0][: length - 1], reference[1][: length - 1])
    agreement, ppl, ref_ppl = compare((tops, logprobs), ref)
    return agreement, ppl / ref_ppl - 1, runner


def test_gguf_as_quantized_dense_path(bundled_folder, ids, reference):
    agreement, ppl_change, runner = measure(
        bundled_folder, ids, reference, LONG, 512, quantization="gguf", quant_direct_max_rows=0
    )
    info = runner.weights_info
    assert info.method == "gguf" and info.weight_bytes < 120e6, info
    assert agreement >= 0.97 and abs(ppl_change) <= 0.01, (agreement, ppl_change)


def direct_kernel(int8: bool):
    """A `prepare` for score_engine: every quantized linear on this direct kernel."""

    def prepare(runner) -> None:
        linears = [m for m in runner.model.modules() if isinstance(m, QuantLinear)]
        assert linears
        for linear in linears:
            linear.int8_activations = int8

    return prepare


def test_gguf_as_quantized_direct_kernel(bundled_folder, ids, reference):
    """float32 activations over the file's exact numbers: only summation order differs."""
    agreement, ppl_change, _ = measure(
        bundled_folder,
        ids,
        reference,
        256,
        64,
        direct_kernel(False),
        quantization="gguf",
        quant_direct_max_rows=64,
    )
    assert agreement >= 0.99 and abs(ppl_change) <= 0.002, (agreement, ppl_change)


@pytest.mark.skipif(not cpu_quant.has_int8_kernel(), reason="no AVX512-VNNI/VBMI")
def test_gguf_as_quantized_int8_direct_kernel_on_every_step(bundled_folder, ids, reference):
    """The integer dot-product kernel (activations as two int8 digits per group, ~15 bits) on
    every step, the LM head included, over the first 512 tokens (time budget): the issue's bars
    with a wide margin. Over all 2,048 tokens it measured 99.95% agreement and perplexity
    -0.004%; one int8 digit, as llama.cpp rounds, gave 89.6% and +0.16%."""
    agreement, ppl_change, _ = measure(
        bundled_folder,
        ids,
        reference,
        SHORT,
        512,
        direct_kernel(True),
        quantization="gguf",
        quant_direct_max_rows=4096,
    )
    assert agreement >= 0.99 and abs(ppl_change) <= 0.002, (agreement, ppl_change)


def test_int8_on_the_fly(bundled_folder, ids, reference):
    agreement, ppl_change, runner = measure(
        bundled_folder, ids, reference, LONG, 512, quantization="int8", quant_direct_max_rows=0
    )
    assert runner.weights_info.method == "int8"
    assert agreement >= 0.97 and abs(ppl_change) <= 0.005, (agreement, ppl_change)


def test_int4_on_the_fly(bundled_folder, ids, reference):
    agreement, ppl_change, _ = measure(
        bundled_folder, ids, reference, SHORT, 512, quantization="int4", quant_direct_max_rows=0
    )
    assert agreement >= 0.95 and abs(ppl_change) <= 0.02, (agreement, ppl_change)


def test_bfloat16_float_weights(bundled_folder, ids, reference):
    """`--quantization none --dtype bfloat16`: activations, KV cache and weights in bf16."""
    agreement, ppl_change, _ = measure(
        bundled_folder, ids, reference, SHORT, 512, quantization="none", dtype="bfloat16"
    )
    assert agreement >= 0.95 and abs(ppl_change) <= 0.02, (agreement, ppl_change)
