"""The quantized matmul on AMX tiles (kernels/cpu/quant_tiles.c through ctypes), for steps of
more than a few rows.

It computes what the dense path computes (weights rounded once to bf16 from float32
`scale * code + offset`, x rounded to bf16, float32 sums; but float32 outputs where the dense
GEMM rounds them to bf16) without writing the de-quantized matrix to memory: each thread decodes 64 columns at a time into a small panel and multiplies
it with every row on AMX tiles. `is_available()` is False where the CPU has no AMX-BF16, the
compiler cannot target it, or the OS refuses AMX state; callers then keep the other kernels.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch

from triode.kernels.cpu_build import build
from triode.kernels.cpu_quant import PreparedMatmul, QuantWeight

# Same float rules as the de-quantizer (quant_matmul.c): mul, then add, never contracted.
_EXTRA_FLAGS = ("-ffp-contract=off",)
K_MULTIPLE = 32  # inputs per tile row


@cache
def load_library() -> ctypes.CDLL | None:
    lib = build("quant_tiles.c", _EXTRA_FLAGS)
    if lib is None:
        return None
    lib.triode_tiles_init.restype = ctypes.c_int
    if lib.triode_tiles_init() != 0:  # no AMX in this build, or the OS says no
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.triode_quant_matmul_tiles.argtypes = [
        ptr, i64, i64,  # x, row stride, rows
        ptr, cint, ptr, ptr, cint, cint, i64, i64,  # codes, bits, scales, offsets, half, group, N, K
        ptr, i64,  # out, row stride
    ]  # fmt: skip
    lib.triode_quant_matmul_tiles.restype = cint
    return lib


def is_available() -> bool:
    return load_library() is not None


def supports(w: QuantWeight) -> bool:
    """Whether the tile kernel takes this weight (its inputs must fill whole tile rows)."""
    return w.in_features % K_MULTIPLE == 0


class PreparedTileMatmul(PreparedMatmul):
    """The tile kernel for one weight, its arguments converted once (as PreparedMatmul)."""

    __slots__ = ()

    def __init__(self, w: QuantWeight) -> None:
        lib = load_library()
        if lib is None or not supports(w):
            raise RuntimeError("the AMX tile kernel is not available for this weight")
        super().__init__(w, lib.triode_quant_matmul_tiles, "tile matmul")


def tile_matmul(x: torch.Tensor, w: QuantWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] float32 @ W^T -> [M, N] float32, in bf16 x bf16 products (see the module)."""
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != w.in_features:
        raise ValueError(f"x must be float32 [M, {w.in_features}], got {x.dtype} {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape[0], w.out_features)
    PreparedTileMatmul(w)(x, out)
    return out
