"""The one-call decode step (kernels/cpu/decode_step.c) through ctypes: the C structures that
describe a model's layers, and the call.

The C side only runs what it is given: the matmul and attention kernels are function
pointers (see `function_address`), the weights raw pointers into tensors that the caller keeps
alive. engine.models.fused_decode builds these descriptions from a loaded model.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch

from triode.kernels.cpu_build import build

MAX_PARTS = 4
# NOTE: -ffast-math (compile step only, see kernels.cpu_build) lets GCC vectorize the norm's
# sum and SiLU's expf; the results then differ from torch's by float rounding, as its own
# reduction order does from ours.
_EXTRA_FLAGS = ("-ffast-math",)

_ptr, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class Part(ctypes.Structure):
    _fields_ = [
        ("small", _ptr),
        ("big", _ptr),
        ("codes", _ptr),
        ("scales", _ptr),
        ("offsets", _ptr),
        ("bits", _i64),
        ("half", _i64),
        ("group", _i64),
        ("N", _i64),
        ("K", _i64),
        ("column", _i64),
    ]


class Linear(ctypes.Structure):
    _fields_ = [
        ("parts", Part * MAX_PARTS),
        ("num_parts", _i64),
        ("in_features", _i64),
        ("out_features", _i64),
        ("max_small_rows", _i64),
        ("bias", _ptr),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", _ptr),
        ("post_norm", _ptr),
        ("qkv", Linear),
        ("o", Linear),
        ("gate_up", Linear),
        ("down", Linear),
        ("k_cache", _ptr),
        ("v_cache", _ptr),
    ]


class Model(ctypes.Structure):
    _fields_ = [
        ("hidden", _i64),
        ("intermediate", _i64),
        ("num_heads", _i64),
        ("num_kv_heads", _i64),
        ("head_dim", _i64),
        ("num_layers", _i64),
        ("block_size", _i64),
        ("max_positions", _i64),
        ("stride_block", _i64),
        ("stride_pos", _i64),
        ("stride_head", _i64),
        ("eps", _f64),
        ("scale", _f64),
        ("rope_cos", _ptr),
        ("rope_sin", _ptr),
        ("final_norm", _ptr),
        ("attention", _ptr),
        ("split_heads", _i64),
        ("kv_dtype", _i64),
        ("chunk_kernel", _i64),
    ]


# model_t.kv_dtype: the KV cache's element type (the attention kernel must read the same).
KV_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@cache
def load_library() -> ctypes.CDLL | None:
    lib = build("decode_step.c", _EXTRA_FLAGS)
    if lib is None:
        return None
    fn = lib.triode_llama_decode
    fn.argtypes = [
        ctypes.POINTER(Model), ctypes.POINTER(Layer), _ptr, _i64,  # model, layers, x, rows
        _ptr, _ptr, _ptr, _i64, _ptr,  # positions, slots, tables, table stride, seq lens
        _ptr, _i64,  # prompt chunks as (first row, rows) pairs, number of chunks
    ]  # fmt: skip
    fn.restype = ctypes.c_int
    store = lib.triode_store_kv
    store.argtypes = [_ptr, _ptr, _i64, _i64]
    store.restype = None
    return lib


def is_available() -> bool:
    return load_library() is not None


def store_kv(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = src rounded to dst's dtype by the C KV write (for the tests: it must round as
    torch's `.to(dtype)` does). src: contiguous float32; dst: contiguous, same size."""
    lib = load_library()
    if lib is None:
        raise RuntimeError("the fused decode step's library is not available (no C compiler?)")
    if src.dtype != torch.float32 or dst.dtype not in KV_DTYPES:
        raise TypeError(f"store_kv takes float32 into {tuple(KV_DTYPES)}, got {dst.dtype}")
    if not (src.is_contiguous() and dst.is_contiguous()) or src.numel() != dst.numel():
        raise ValueError("store_kv takes contiguous tensors of one size")
    lib.triode_store_kv(src.data_ptr(), dst.data_ptr(), src.numel(), KV_DTYPES[dst.dtype])


def function_address(fn: ctypes._CFuncPtr) -> int:
    """The C address of a ctypes-loaded function (to pass as a kernel pointer)."""
    return ctypes.cast(fn, ctypes.c_void_p).value or 0
