"""Weight-only quantized matmuls on the CPU (kernels/cpu/quant_matmul.c through ctypes).

`QuantWeight` is a [N, K] matrix as 4-bit or 8-bit integer codes in the kernel's blocked layout
with a scale (and optional offset) per group of inputs; `pack` builds one from plain codes.
`quant_matmul` is the small-step kernel (float32 activations, the weights read once);
`dequantize_bf16` writes W^T as bf16 for a dense GEMM on big steps. Without a C compiler,
`is_available()` is False and the engine serves float weights instead.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import torch

from triode.kernels.cpu_build import build

BLOCK_N = 64
# Only flags that keep float semantics: the de-quantizer must round exactly as documented.
_EXTRA_FLAGS = ("-ffp-contract=off",)


@cache
def load_library() -> ctypes.CDLL | None:
    lib = build("quant_matmul.c", _EXTRA_FLAGS)
    if lib is None:
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.triode_quant_matmul.argtypes = [
        ptr, i64, i64,  # x, row stride, rows
        ptr, cint, ptr, ptr, cint, cint, i64, i64,  # codes, bits, scales, offsets, half, group, N, K
        ptr, i64,  # out, row stride
    ]  # fmt: skip
    lib.triode_quant_matmul.restype = cint
    # Same signature, int8 activations (quant_q8a.h); the float kernel where it cannot run.
    lib.triode_quant_matmul_q8a.argtypes = lib.triode_quant_matmul.argtypes
    lib.triode_quant_matmul_q8a.restype = cint
    lib.triode_quant_q8a_is_native.argtypes = []
    lib.triode_quant_q8a_is_native.restype = cint
    lib.triode_quant_dequant_bf16.argtypes = [
        ptr, cint, ptr, ptr, cint, cint, i64, i64,  # weight as above
        i64, i64, ptr, i64,  # column range, out, row stride
    ]  # fmt: skip
    lib.triode_quant_dequant_bf16.restype = cint
    return lib


def is_available() -> bool:
    return load_library() is not None


def has_int8_kernel() -> bool:
    """Whether `quant_matmul(..., int8_activations=True)` runs on integer dot products here
    (AVX512-VNNI and VBMI); elsewhere it is the float32 kernel."""
    lib = load_library()
    return lib is not None and bool(lib.triode_quant_q8a_is_native())


def supports_int8(w: QuantWeight) -> bool:
    """Whether the int8-activation kernel takes this weight (groups of whole 16s)."""
    return w.group_size % 16 == 0


@dataclass(frozen=True, slots=True)
class QuantWeight:
    """W[n, k] = scales[k // group, n] * code[n, k] + offsets[k // group, n] (see the C file)."""

    codes: torch.Tensor  # uint8 [N_pad / 64, K, 32] (4-bit) or int8 [N_pad / 64, K, 64]
    scales: torch.Tensor  # float32 or float16 [K / group, N_pad]
    offsets: torch.Tensor | None  # like scales, or None (symmetric)
    bits: int
    group_size: int
    out_features: int  # N
    in_features: int  # K

    @property
    def nbytes(self) -> int:
        extra = 0 if self.offsets is None else self.offsets.nbytes
        return self.codes.nbytes + self.scales.nbytes + extra

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save (the rest is in `meta`)."""
        out = {"codes": self.codes, "scales": self.scales}
        if self.offsets is not None:
            out["offsets"] = self.offsets
        return out

    def meta(self) -> list[int]:
        return [self.bits, self.group_size, self.out_features, self.in_features]

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: list[int]) -> QuantWeight:
        bits, group, n, k = meta
        return cls(tensors["codes"], tensors["scales"], tensors.get("offsets"), bits, group, n, k)


def pack(
    codes: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> QuantWeight:
    """Codes [N, K] (0..15 for 4 bits, -128..127 for 8) with scales/offsets [N, K / group]."""
    n, k = codes.shape
    if bits not in (4, 8) or k % group_size or scales.shape != (n, k // group_size):
        raise ValueError(f"cannot pack {bits}-bit codes {tuple(codes.shape)}, group {group_size}")
    n_pad = -(-n // BLOCK_N) * BLOCK_N
    padded = torch.zeros(n_pad, k, dtype=torch.int16)
    padded[:n] = codes.to(torch.int16)
    blocks = padded.view(n_pad // BLOCK_N, BLOCK_N, k).transpose(1, 2)  # [NB, K, 64]
    if bits == 4:
        if int(codes.min()) < 0 or int(codes.max()) > 15:
            raise ValueError("4-bit codes must be in 0..15")
        packed = (blocks[..., :32] | (blocks[..., 32:] << 4)).to(torch.uint8).contiguous()
    else:
        if int(codes.min()) < -128 or int(codes.max()) > 127:
            raise ValueError("8-bit codes must be in -128..127")
        packed = blocks.to(torch.int8).contiguous()
    params = [scales] if offsets is None else [scales, offsets]
    # Half precision where it holds every value exactly (GGUF's Q4_0/Q4_1/Q8_0 scales do).
    half = all(bool(torch.equal(p.float().half().float(), p.float())) for p in params)
    dtype = torch.float16 if half else torch.float32

    def layout(p: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(k // group_size, n_pad, dtype=dtype)
        out[:, :n] = p.t().to(dtype)
        return out

    return QuantWeight(
        packed,
        layout(scales),
        None if offsets is None else layout(offsets),
        bits,
        group_size,
        n,
        k,
    )


def weight_args(w: QuantWeight) -> tuple:
    """The C kernels' weight arguments (codes, bits, scales, offsets, half, group, N, K)."""
    return (
        w.codes.data_ptr(),
        w.bits,
        w.scales.data_ptr(),
        None if w.offsets is None else w.offsets.data_ptr(),
        int(w.scales.dtype == torch.float16),
        w.group_size,
        w.out_features,
        w.in_features,
    )


def direct_kernel(int8_activations: bool = False):
    """The C entry point of the direct kernel: float32 activations, or int8 ones (quant_q8a.h)."""
    lib = load_library()
    if lib is None:
        raise RuntimeError("the CPU quantized matmul is not available (no C compiler?)")
    return lib.triode_quant_matmul_q8a if int8_activations else lib.triode_quant_matmul


class PreparedMatmul:
    """The kernel call for one weight with its arguments converted once (a decode step calls
    every linear once per layer: per-call Python work is worth trimming). `fn` is a C entry
    point with the quantized matmul's signature (default: the direct kernel).

    C callers (a fused decode step) call `fn_address` as
    `int fn(x, ldx, M, *weight_args, out, ldo)` with triode_quant_matmul's signature."""

    __slots__ = ("_args", "_fn", "_name", "in_features", "out_features")

    def __init__(self, w: QuantWeight, fn=None, name: str = "quantized matmul") -> None:
        self._fn = direct_kernel() if fn is None else fn
        self._name = name
        self._args = weight_args(w)
        self.in_features, self.out_features = w.in_features, w.out_features

    @property
    def fn_address(self) -> int:
        """The C entry point's address."""
        return ctypes.cast(self._fn, ctypes.c_void_p).value or 0

    @property
    def weight_args(self) -> tuple:
        """(codes, bits, scales, offsets, half, group, N, K): pointers as ints (None: NULL)."""
        return self._args

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out[:, :N] = x @ W^T; x float32 [M, K] with unit column stride, out float32 rows."""
        rc = self._fn(
            x.data_ptr(), x.stride(0), x.shape[0], *self._args, out.data_ptr(), out.stride(0)
        )
        if rc != 0:
            raise RuntimeError(f"{self._name} failed (code {rc})")


def quant_matmul(
    x: torch.Tensor,
    w: QuantWeight,
    out: torch.Tensor | None = None,
    int8_activations: bool = False,
) -> torch.Tensor:
    """x [M, K] float32 @ W^T -> [M, N] float32 (x rounded to int8 per row and group first
    with `int8_activations`, where `has_int8_kernel()`)."""
    fn = direct_kernel(int8_activations)
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != w.in_features:
        raise ValueError(f"x must be float32 [M, {w.in_features}], got {x.dtype} {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    if out is None:
        out = torch.empty(m, w.out_features)
    rc = fn(x.data_ptr(), x.stride(0), m, *weight_args(w), out.data_ptr(), out.stride(0))
    if rc != 0:
        raise RuntimeError(f"quantized matmul failed (code {rc})")
    return out


def dequantize_bf16(
    w: QuantWeight, out: torch.Tensor, n_start: int = 0, n_end: int | None = None
) -> torch.Tensor:
    """Columns [n_start, n_end) of W^T as bf16 into `out` [K, n_end - n_start] (row-major)."""
    lib = load_library()
    if lib is None:
        raise RuntimeError("the CPU quantized matmul is not available (no C compiler?)")
    n_end = w.out_features if n_end is None else n_end
    if out.dtype != torch.bfloat16 or out.stride(1) != 1 or out.shape[0] < w.in_features:
        raise ValueError("out must be a row-major bf16 [K, columns] buffer")
    if out.shape[1] < n_end - n_start:
        raise ValueError("out has fewer columns than requested")
    rc = lib.triode_quant_dequant_bf16(
        *weight_args(w), n_start, n_end, out.data_ptr(), out.stride(0)
    )
    if rc != 0:
        raise RuntimeError(f"de-quantization failed (code {rc})")
    return out


def dequantize_reference(w: QuantWeight) -> torch.Tensor:
    """W [N, K] float32 from the packed form, in torch (tests; embedding rows use `rows`)."""
    return rows(w, torch.arange(w.out_features))


def rows(w: QuantWeight, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of W as float32 [len(index), K]: `scale * code`, then `+ offset` (the
    embedding lookup of a quantized, tied embedding)."""
    index = index.long()
    block, lane = index // BLOCK_N, index % BLOCK_N
    if w.bits == 4:
        byte = w.codes[block, :, lane % 32]  # [T, K]
        codes = torch.where(lane[:, None] < 32, byte & 0x0F, byte >> 4)
    else:
        codes = w.codes[block, :, lane]
    group = w.group_size
    scales = w.scales[:, index].t().float().repeat_interleave(group, dim=1)
    values = codes.float() * scales
    if w.offsets is not None:
        values = values + w.offsets[:, index].t().float().repeat_interleave(group, dim=1)
    return values


def can_concat(parts: list[QuantWeight]) -> bool:
    """Whether `concat` can stack these matrices into one (same format, whole column blocks)."""
    first = parts[0]
    return all(
        p.bits == first.bits
        and p.group_size == first.group_size
        and p.in_features == first.in_features
        and p.scales.dtype == first.scales.dtype
        and (p.offsets is None) == (first.offsets is None)
        for p in parts
    ) and all(p.out_features % BLOCK_N == 0 for p in parts[:-1])


def concat(parts: list[QuantWeight]) -> QuantWeight:
    """Matrices stacked along their outputs (fused q/k/v or gate/up): one kernel call."""
    if not can_concat(parts):
        raise ValueError("these quantized matrices cannot be stacked into one")
    first = parts[0]
    offsets = None
    if first.offsets is not None:
        offsets = torch.cat([p.offsets for p in parts], dim=1)  # type: ignore[misc]
    return QuantWeight(
        torch.cat([p.codes for p in parts]),
        torch.cat([p.scales for p in parts], dim=1),
        offsets,
        first.bits,
        first.group_size,
        sum(p.out_features for p in parts),
        first.in_features,
    )


def codes_of(w: QuantWeight) -> torch.Tensor:
    """The integer codes [N, K] (int16) back from the blocked layout (for other kernels)."""
    n_pad = w.codes.shape[0] * BLOCK_N
    if w.bits == 4:
        low = (w.codes & 0x0F).to(torch.int16)
        high = (w.codes >> 4).to(torch.int16)
        blocks = torch.cat([low, high], dim=2)  # [NB, K, 64]
    else:
        blocks = w.codes.to(torch.int16)
    return blocks.transpose(1, 2).reshape(n_pad, w.in_features)[: w.out_features]
