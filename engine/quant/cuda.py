"""Quantized linears on CUDA, for the same `--quantization` methods.

- 4-bit codes (GGUF Q4_0/Q4_1/Q4_K, `int4`): torch's tinygemm kernel
  (`_weight_int4pack_mm`, bf16 activations; w = (q - 8) * scale + zero per group, so a GGUF
  offset m becomes zero = m + 8 * scale, both rounded to bf16).
- `int8`: per-channel symmetric int8 through `_weight_int8pack_mm` (bf16 activations).
- `fp8` (compute capability 8.9+, e.g. Hopper): e4m3 weights with a per-channel scale, the
  activations quantized per token on the fly, `torch._scaled_mm` with row-wise scales.
- 8-bit GGUF groups (Q8_0, Q5_K, Q6_K) and float tensors: de-quantized to dense bf16.

Activations enter and leave in the model's dtype; the KV cache and attention are untouched
(Triton). Tested on a GPU when one is lent (tests marked `gpu`); never needed for CI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triode.engine.quant.info import WeightsInfo, WeightSummary, describe
from triode.engine.quant.linear import Part
from triode.engine.quant.model import ModuleFactory, build_model, load_weights, read_config
from triode.engine.quant.onthefly import quantize_int8
from triode.kernels.cpu_quant import QuantWeight, codes_of, dequantize_reference

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _inner_k_tiles(k: int) -> int | None:
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    return None


def _scale_rows(p: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """Scales/offsets from the CPU layout [G, N_pad] to [N, G] float32."""
    return p[:, : w.out_features].t().float()


class CudaInt4Linear(nn.Module):
    """tinygemm int4 (groups of 32..256) from 4-bit codes with a scale and offset per group."""

    def __init__(self, weight: QuantWeight, device: torch.device) -> None:
        super().__init__()
        n, k = weight.out_features, weight.in_features
        tiles = _inner_k_tiles(k)
        if weight.bits != 4 or tiles is None or weight.group_size not in (32, 64, 128, 256):
            raise ValueError("not a tinygemm int4 shape")
        codes = codes_of(weight).to(torch.int32)
        packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).to(device)
        self.packed = torch.ops.aten._convert_weight_to_int4pack(packed, tiles)
        scales = _scale_rows(weight.scales, weight)
        offsets = (
            torch.zeros_like(scales)
            if weight.offsets is None
            else _scale_rows(weight.offsets, weight)
        )
        zeros = offsets + 8 * scales  # tinygemm: (q - 8) * scale + zero
        self.scales_and_zeros = (
            torch.stack([scales.t(), zeros.t()], dim=-1).contiguous().to(device, torch.bfloat16)
        )  # [G, N, 2]
        self.group_size = weight.group_size
        self.in_features, self.out_features = k, n

    def weight_summaries(self) -> list[WeightSummary]:
        nbytes = self.packed.nbytes + self.scales_and_zeros.nbytes
        name = f"int4 g{self.group_size} tinygemm"
        return [(id(self), name, self.in_features * self.out_features, nbytes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int4pack_mm(
            x.to(torch.bfloat16), self.packed, self.group_size, self.scales_and_zeros
        )
        return out.to(x.dtype)


class CudaInt8Linear(nn.Module):
    """Per-channel symmetric int8 weights (`_weight_int8pack_mm`)."""

    def __init__(self, weight: QuantWeight, device: torch.device) -> None:
        super().__init__()
        if (
            weight.bits != 8
            or weight.group_size != weight.in_features
            or weight.offsets is not None
        ):
            raise ValueError("not a per-channel symmetric int8 weight")
        self.weight = codes_of(weight).to(torch.int8).to(device)
        self.scales = _scale_rows(weight.scales, weight)[:, 0].to(device, torch.bfloat16)
        self.in_features, self.out_features = weight.in_features, weight.out_features

    def weight_summaries(self) -> list[WeightSummary]:
        nbytes = self.weight.nbytes + self.scales.nbytes
        return [(id(self), "int8 channel", self.weight.numel(), nbytes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scales)
        return out.to(x.dtype)


class CudaFp8Linear(nn.Module):
    """e4m3 weights, per-channel scale; activations quantized per token; `torch._scaled_mm`."""

    def __init__(self, weight: torch.Tensor, device: torch.device) -> None:
        super().__init__()
        w = weight.float().to(device)
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
        self.weight = (w / scale).to(torch.float8_e4m3fn)  # [N, K] row-major
        self.weight_scale = scale.t().contiguous()  # [1, N] float32
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def weight_summaries(self) -> list[WeightSummary]:
        nbytes = self.weight.nbytes + self.weight_scale.nbytes
        return [(id(self), "fp8 e4m3 channel", self.weight.numel(), nbytes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        padded = -(-rows // 16) * 16  # _scaled_mm wants whole tiles of 16 rows
        x32 = F.pad(x.float(), (0, 0, 0, padded - rows))
        x_scale = (x32.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
        x8 = (x32 / x_scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            x8,
            self.weight.t(),  # column-major [K, N], as the kernel wants
            scale_a=x_scale,
            scale_b=self.weight_scale,
            out_dtype=torch.bfloat16,
        )
        return out[:rows].to(x.dtype)


class _Stacked(nn.Module):
    """Several linears' outputs side by side (fused q/k/v or gate/up in different formats)."""

    def __init__(self, parts: list[nn.Module], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([p(x) for p in self.parts], dim=-1)
        return out if self.bias is None else out + self.bias.to(out.dtype)


class CudaModuleFactory(ModuleFactory):
    def __init__(self, device: torch.device, method: str) -> None:
        super().__init__()
        self.device = device
        self.method = method

    def _one(self, part: Part) -> nn.Module:
        if self.method == "fp8":
            assert isinstance(part, torch.Tensor)
            return CudaFp8Linear(part, self.device)
        if isinstance(part, QuantWeight):
            try:
                if part.bits == 4:
                    return CudaInt4Linear(part, self.device)
                return CudaInt8Linear(part, self.device)
            except ValueError:
                part = dequantize_reference(part)
        return _Bf16Linear(part.to(self.device, torch.bfloat16))

    def linear(self, parts: list[Part], bias: torch.Tensor | None) -> nn.Module:
        bias = None if bias is None else bias.to(self.device)
        return _Stacked([self._one(p) for p in parts], bias)

    def embedding(self, weight: Part) -> nn.Module:
        table = dequantize_reference(weight) if isinstance(weight, QuantWeight) else weight
        return nn.Embedding.from_pretrained(table.float().to(self.device), freeze=True)


class _Bf16Linear(nn.Module):
    """A dense bf16 weight, kept bf16 whatever the model's dtype (not a parameter)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def weight_summaries(self) -> list[WeightSummary]:
        return [(self.weight.data_ptr(), "bfloat16", self.weight.numel(), self.weight.nbytes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


def load_cuda_quantized_model(
    folder, gguf, method: str, dtype: torch.dtype, device: torch.device
) -> tuple[nn.Module, object, WeightsInfo]:
    """(model, hf_config, what is served) on a CUDA device."""
    if method == "fp8":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError("quantization 'fp8' needs compute capability 8.9+ (Ada, Hopper)")
    hf_config, cfg, cos, sin = read_config(folder)
    if method == "int8":  # tinygemm's int8 kernel is per channel and symmetric
        from triode.engine.models import read_safetensors

        weights: dict[str, Part] = {}
        for name, tensor in read_safetensors(folder).items():
            is_matrix = tensor.dim() == 2
            weights[name] = (
                quantize_int8(tensor, None, allow_offsets=False) if is_matrix else tensor.float()
            )
        source_types: dict[str, int] = {}
    else:
        weights, source_types = load_weights(folder, gguf, method, cfg)
    model = build_model(cfg, cos, sin, weights, CudaModuleFactory(device, method))
    model.to(device=device, dtype=dtype)  # norms, biases, embedding: quantized parts are not
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)  # type: ignore[assignment]
    info = describe(model, method, str(dtype).removeprefix("torch."), source_types)
    return model.eval(), hf_config, info
