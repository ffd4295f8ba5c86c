"""Weight-only quantization of float weights at load time (`--quantization int8 | int4`), and
the mapping of a GGUF file's unpacked blocks onto the kernel's two formats.

- int8: groups of 32 inputs, symmetric (code = round(w / s), s = max|w| / 127) or asymmetric
  (256 levels from the group's min to its max), whichever is closer for the matrix.
  NOTE: per output channel (vLLM's and torchao's int8 weight-only) was measured first on the
  bundled model: +1.5% perplexity and 94% top-1 agreement with the float model, because its
  weights are already 4-bit grids that a per-row int8 step cuts across. Groups of 32 keep
  such grids exactly (asymmetric for Q4_1-like rows, symmetric for Q8_0-like ones) and cost
  a quarter more bytes than per channel.
- int4: groups of 32 inputs, asymmetric: code = round((w - min) / s), s = (max - min) / 15,
  offset = min (the Q4_1 scheme). Matrices whose input size is not a multiple of 32 fall back
  to int8.
- GGUF: Q4_0/Q4_1/Q4_K become 4-bit codes (Q4_0's signed codes shifted by 8, with the offset
  -8 * scale: the same numbers); Q8_0/Q5_K/Q6_K become 8-bit codes with their own group size
  (Q5_K's 5-bit and Q6_K's 6-bit codes fit a byte exactly). Nothing is re-rounded.
"""

from __future__ import annotations

import numpy as np
import torch

from triode.engine.quant.gguf_blocks import GroupedCodes
from triode.kernels.cpu_quant import QuantWeight, pack

INT4_GROUP = 32
INT8_GROUP = 32


def quantize_int8(
    weight: torch.Tensor, group_size: int | None = INT8_GROUP, allow_offsets: bool = True
) -> QuantWeight:
    """int8 codes per group of `group_size` inputs (per row if None or K is not whole groups):
    the symmetric or the asymmetric scheme, whichever reconstructs this matrix more closely
    (symmetric only without `allow_offsets`)."""
    n, k = weight.shape
    group = group_size if group_size and k % group_size == 0 else k
    w = weight.float().view(n, k // group, group)
    absmax = w.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    sym_codes = torch.round(w / scale).clamp_(-127, 127)
    sym_error = ((sym_codes * scale - w) ** 2).sum()
    low = w.amin(dim=-1, keepdim=True)
    high = w.amax(dim=-1, keepdim=True)
    step = torch.where(high > low, (high - low) / 255, torch.ones_like(high))
    asym_codes = torch.round((w - low) / step).clamp_(0, 255) - 128  # int8 range, offset moved
    offset = low + 128 * step
    asym_error = ((asym_codes * step + offset - w) ** 2).sum()
    if sym_error <= asym_error or not allow_offsets:
        return pack(sym_codes.view(n, k).to(torch.int8), scale[..., 0], None, 8, group)
    return pack(asym_codes.view(n, k).to(torch.int8), step[..., 0], offset[..., 0], 8, group)


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP) -> QuantWeight:
    """Group-wise asymmetric int4 of a float matrix [N, K] (int8 if K is not whole groups)."""
    n, k = weight.shape
    if k % group_size:
        return quantize_int8(weight, k)
    w = weight.float().view(n, k // group_size, group_size)
    low = w.amin(dim=-1)
    high = w.amax(dim=-1)
    scale = torch.where(high > low, (high - low) / 15, torch.ones_like(high))
    codes = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15)
    return pack(codes.view(n, k).to(torch.uint8), scale, low, 4, group_size)


def from_gguf(codes: GroupedCodes) -> QuantWeight:
    """The kernel format holding exactly the numbers of a GGUF block format."""
    values = torch.from_numpy(np.ascontiguousarray(codes.codes))
    scales = torch.from_numpy(codes.scales)
    offsets = None if codes.offsets is None else torch.from_numpy(codes.offsets)
    if codes.bits == 4:
        if codes.offsets is None:  # Q4_0: d * (q - 8) = d * q + (-8 d), exact in float32
            values = values.to(torch.int16) + 8
            offsets = scales * -8.0
        return pack(values, scales, offsets, 4, codes.group_size)
    return pack(values, scales, offsets, 8, codes.group_size)
