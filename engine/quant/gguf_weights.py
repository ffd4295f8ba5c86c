"""A GGUF file's tensors under transformers' names, quantized ones left quantized.

Quantized tensors of the supported block formats come back as `GroupedCodes` (their numbers,
unchanged); float tensors (F32/F16/BF16) and quantized types this engine has no kernel format
for (Q5_0, Q2_K, IQ*, ...) come back as float32 arrays, the latter de-quantized by `gguf` (exact,
at float32's memory cost). llama.cpp stores the rows of a Llama model's q and k projections
permuted for its interleaved rotary layout; they are put back in transformers' rotate-half order
here, as transformers does (a row permutation, so quantized rows stay exact).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from triode.engine.quant.gguf_blocks import SUPPORTED, GroupedCodes, unpack

logger = logging.getLogger(__name__)

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
# llama.cpp's converter permutes q/k rows for these architectures only.
_PERMUTED_ARCHITECTURES = {"llama"}

Tensor = GroupedCodes | np.ndarray


def hf_name(gguf_name: str) -> str | None:
    """transformers' name for a GGUF tensor name, or None for tensors we do not use."""
    base, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if base.startswith("blk."):
        _, index, short = base.split(".", 2)
        mapped = _LAYER_NAMES.get(short)
        return None if mapped is None else f"model.layers.{index}.{mapped}.{suffix}"
    mapped = _TOP_NAMES.get(base)
    return None if mapped is None else f"{mapped}.{suffix}"


def _unpermute_index(rows: int, num_heads: int) -> np.ndarray:
    """Row order that turns llama.cpp's interleaved q/k rows back into rotate-half order."""
    half = rows // num_heads // 2
    return np.arange(rows).reshape(num_heads, half, 2).transpose(0, 2, 1).reshape(-1)


def _float_array(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.BF16:
        bits = np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.asarray(raw, dtype=np.float32)


def read_gguf_tensors(
    path: Path, num_heads: int, num_kv_heads: int
) -> tuple[dict[str, Tensor], Counter[str]]:
    """Every used tensor of the file by transformers' name, and a count of their GGUF types."""
    reader = GGUFReader(str(path))
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[-1]).decode() if arch_field is not None else "llama"
    tensors: dict[str, Tensor] = {}
    types: Counter[str] = Counter()
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        shape = [int(d) for d in reversed(t.shape)]  # ggml lists the fastest dimension first
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        cols = shape[-1]
        qtype = t.tensor_type
        types[qtype.name] += 1
        value: Tensor
        if qtype in _FLOAT_TYPES:
            value = _float_array(t.data, qtype).reshape(shape)
        elif qtype in SUPPORTED and len(shape) == 2:
            value = unpack(t.data, qtype, rows, cols)
        else:
            logger.info("%s: GGUF type %s has no kernel format; de-quantized", t.name, qtype.name)
            value = dequantize(t.data, qtype).reshape(shape).astype(np.float32)
        if arch in _PERMUTED_ARCHITECTURES and (".q_proj." in name or ".k_proj." in name):
            heads = num_heads if ".q_proj." in name else num_kv_heads
            index = _unpermute_index(shape[0], heads)
            value = value.take_rows(index) if isinstance(value, GroupedCodes) else value[index]
        tensors[name] = value
    return tensors, types
