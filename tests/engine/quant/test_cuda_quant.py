"""The CUDA quantized linears (tinygemm int4, int8 per channel, FP8 on Hopper) against float64
products on the same numbers, and the bundled model served quantized on a GPU. Skipped without
CUDA; run on a lent GPU."""

from __future__ import annotations

import pytest
import torch

from triode.engine.quant.onthefly import quantize_int4, quantize_int8
from triode.kernels.cpu_quant import dequantize_reference

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICE = torch.device("cuda") if HAS_CUDA else torch.device("cpu")


def product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weight.double().t()).float()


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("shape", [(576, 960), (1536, 576), (256, 4096)])
def test_int4_tinygemm(rows, shape):
    from triode.engine.quant.cuda import CudaInt4Linear

    k, n = shape
    w = torch.randn(n, k) * 0.05
    quantized = quantize_int4(w)
    layer = CudaInt4Linear(quantized, DEVICE)
    x = torch.randn(rows, k)
    got = layer(x.to(DEVICE, torch.bfloat16)).float().cpu()
    want = product(x.bfloat16().float(), dequantize_reference(quantized))
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("rows", [1, 33])
def test_int8_per_channel(rows):
    from triode.engine.quant.cuda import CudaInt8Linear

    w = torch.randn(960, 576) * 0.05
    quantized = quantize_int8(w, None, allow_offsets=False)
    layer = CudaInt8Linear(quantized, DEVICE)
    x = torch.randn(rows, 576)
    got = layer(x.to(DEVICE, torch.bfloat16)).float().cpu()
    torch.testing.assert_close(
        got, product(x.bfloat16().float(), dequantize_reference(quantized)), rtol=2e-2, atol=2e-2
    )


@pytest.mark.skipif(
    not HAS_CUDA or torch.cuda.get_device_capability() < (8, 9), reason="FP8 needs sm_89+"
)
@pytest.mark.parametrize("rows", [1, 20])
def test_fp8_scaled_mm(rows):
    from triode.engine.quant.cuda import CudaFp8Linear

    w = torch.randn(1024, 576) * 0.05
    layer = CudaFp8Linear(w, DEVICE)
    x = torch.randn(rows, 576)
    got = layer(x.to(DEVICE, torch.bfloat16)).float().cpu()
    want = product(x, w)
    # e4m3 keeps 3 mantissa bits on both sides: a few percent of the output's scale.
    assert (got - want).norm() / want.norm() < 0.06


@pytest.mark.parametrize("quantization", ["gguf", "int8", "int4"])
def test_bundled_model_quantized_on_gpu_answers(quantization):
    from triode.engine import LLM, SamplingParams
    from triode.engine.llm import apply_chat_template

    llm = LLM(quantization=quantization, device="cuda", dtype="bfloat16")
    info = llm.engine.runner.weights_info
    assert info.method == quantization and info.weight_bytes < 200e6
    ids = apply_chat_template(
        llm.get_tokenizer(), [{"role": "user", "content": "What is the capital of France?"}]
    )
    out = llm.generate(
        [{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False
    )
    assert "Paris" in out[0].outputs[0].text
