"""Build a Llama-family model whose linears and embedding hold quantized weights (CPU).

Weights come from a GGUF file as they are quantized (`method="gguf"`, packed once and cached
next to the converted folder), or from the float checkpoint quantized on load (`"int8"`,
`"int4"`). The module tree is the float model's with its linears swapped (as gpt-fast does);
norms, biases and float tensors stay float. The model is built on the meta device first, so
the float weights are never materialised.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from triode.engine.models.linear import Linear
from triode.engine.models.llama import LlamaConfig, LlamaForCausalLM, rope_tables
from triode.engine.quant import packed_cache
from triode.engine.quant.info import WeightsInfo, describe
from triode.engine.quant.linear import Part, QuantEmbedding, QuantLinear, Scratch
from triode.engine.quant.onthefly import from_gguf, quantize_int4, quantize_int8
from triode.kernels.cpu_quant import QuantWeight, can_concat, concat

logger = logging.getLogger(__name__)

METHODS = ("gguf", "int8", "int4")  # on the CPU; CUDA adds "fp8" (engine.quant.cuda)
_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_gguf_weights(gguf: Path, cfg: LlamaConfig) -> tuple[dict[str, Part], dict[str, int]]:
    from triode.engine.quant.gguf_weights import GroupedCodes, read_gguf_tensors

    tensors, types = read_gguf_tensors(gguf, cfg.num_heads, cfg.num_kv_heads)
    weights: dict[str, Part] = {}
    for name, value in tensors.items():
        if isinstance(value, GroupedCodes):
            weights[name] = from_gguf(value)
        else:
            weights[name] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    return weights, dict(types)


def quantize_float_weights(tensors: dict[str, torch.Tensor], method: str) -> dict[str, Part]:
    """int8: every linear and the embedding; int4: the linears, with the embedding (also the
    tied LM head, the most sensitive matrix) in int8."""
    out: dict[str, Part] = {}
    for name, tensor in tensors.items():
        is_linear = name.endswith(".weight") and any(f".{n}." in name for n in _LINEARS)
        is_table = name in ("model.embed_tokens.weight", "lm_head.weight")
        if is_linear and method == "int4":
            out[name] = quantize_int4(tensor)
        elif is_linear or is_table:
            out[name] = quantize_int8(tensor)
        else:
            out[name] = tensor.float()
    return out


class ModuleFactory:
    """Turns weights into modules; the CPU one below, the CUDA one in engine.quant.cuda."""

    def __init__(self) -> None:
        self.scratch = Scratch()

    def linear(self, parts: list[Part], bias: torch.Tensor | None) -> nn.Module:
        if all(isinstance(p, torch.Tensor) for p in parts):
            return dense_linear(torch.cat(parts), bias)  # type: ignore[arg-type]
        quantized = [p for p in parts if isinstance(p, QuantWeight)]
        # NOTE: one part is used as it is: concat copies, and a tied LM head shares the
        # embedding's codes (a copy would cost the largest matrix twice).
        if len(parts) > 1 and len(quantized) == len(parts) and can_concat(quantized):
            parts = [concat(quantized)]
        return QuantLinear(parts, bias, self.scratch)

    def embedding(self, weight: Part) -> nn.Module:
        if isinstance(weight, QuantWeight):
            return QuantEmbedding(weight)
        return nn.Embedding.from_pretrained(weight.float(), freeze=True)


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    module = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    module.weight = nn.Parameter(weight.float(), requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias.float(), requires_grad=False)
    return module


def build_model(
    cfg: LlamaConfig,
    cos: torch.Tensor,
    sin: torch.Tensor,
    weights: dict[str, Part],
    factory: ModuleFactory,
) -> LlamaForCausalLM:
    """The model with its heavy modules built from `weights` (transformers' names; consumed)."""

    def take(name: str) -> Part:
        try:
            return weights.pop(name)
        except KeyError:
            raise ValueError(f"weight {name!r} missing from the checkpoint") from None

    def vector(name: str) -> nn.Parameter:
        value = take(name)
        assert isinstance(value, torch.Tensor), name
        return nn.Parameter(value.float(), requires_grad=False)

    def linear(names: list[str], bias_names: list[str] | None = None) -> nn.Module:
        bias = None
        if bias_names:
            bias = torch.cat([take(n).float() for n in bias_names])  # type: ignore[union-attr]
        return factory.linear([take(n) for n in names], bias)

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, cos, sin)
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        qkv = [p + f"self_attn.{n}_proj.weight" for n in "qkv"]
        biases = [p + f"self_attn.{n}_proj.bias" for n in "qkv"] if cfg.attention_bias else None
        layer.qkv_proj = linear(qkv, biases)
        layer.o_proj = linear([p + "self_attn.o_proj.weight"])
        layer.gate_up_proj = linear([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"])
        layer.down_proj = linear([p + "mlp.down_proj.weight"])
        layer.input_norm.weight = vector(p + "input_layernorm.weight")
        layer.post_norm.weight = vector(p + "post_attention_layernorm.weight")
    model.norm.weight = vector("model.norm.weight")
    embed = take("model.embed_tokens.weight")
    model.embed_tokens = factory.embedding(embed)
    if cfg.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
        head = embed
    else:
        head = take("lm_head.weight")
    if isinstance(head, QuantWeight) or not cfg.tie_word_embeddings:
        model.lm_head = factory.linear([head], None)
    model.rope_cos = cos  # type: ignore[assignment]  (buffers made under the meta device)
    model.rope_sin = sin  # type: ignore[assignment]
    leftover = [k for k in weights if "rotary_emb" not in k]
    if leftover:
        raise ValueError(f"unexpected weights in the checkpoint: {leftover[:5]}")
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not meta, f"weights left unloaded: {meta[:5]}"
    return model.eval()


def read_config(folder: Path) -> tuple[object, LlamaConfig, torch.Tensor, torch.Tensor]:
    """(hf_config, our config, rope cos, rope sin) of a model folder."""
    from transformers import AutoConfig

    from triode.engine.models import check_architecture

    hf_config = AutoConfig.from_pretrained(str(folder))
    check_architecture(hf_config)
    cfg = LlamaConfig.from_hf(hf_config)
    cos, sin = rope_tables(hf_config, cfg.head_dim, cfg.max_position_embeddings)
    return hf_config, cfg, cos, sin


def load_weights(
    folder: Path, gguf: Path | None, method: str, cfg: LlamaConfig
) -> tuple[dict[str, Part], dict[str, int]]:
    """The weights for `method` (gguf: the cached packed file when there is one), and the
    source file's tensor types."""
    from triode.engine.models import read_safetensors

    start = time.perf_counter()
    source_types: dict[str, int] = {}
    if method == "gguf":
        if gguf is None:
            raise ValueError("quantization 'gguf' needs a .gguf model file")
        path = packed_cache.cache_path(folder, method)
        cached = packed_cache.load(path)
        if cached is not None:
            weights, extra = cached
            source_types = extra.get("source_types", {})
            how = "cached"
        else:
            weights, source_types = load_gguf_weights(gguf, cfg)
            packed_cache.save(path, weights, {"source_types": source_types})
            how = "packed"
    elif method == "fp8":  # converted by the CUDA module factory
        weights = dict(read_safetensors(folder))
        how = "read"
    else:
        weights = quantize_float_weights(read_safetensors(folder), method)
        how = "quantized"
    logger.info("%s weights (%s) in %.1f s", how, method, time.perf_counter() - start)
    return weights, source_types


def load_quantized_model(
    folder: Path, gguf: Path | None, method: str, dtype: torch.dtype
) -> tuple[LlamaForCausalLM, object, WeightsInfo]:
    """(model, hf_config, what is served) for `method` in METHODS, on the CPU."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; expected one of {METHODS}")
    hf_config, cfg, cos, sin = read_config(folder)
    weights, source_types = load_weights(folder, gguf, method, cfg)
    model = build_model(cfg, cos, sin, weights, ModuleFactory())
    if dtype != torch.float32:
        model.to(dtype)  # norms and float weights; quantized parts are not module tensors
        model.rope_cos, model.rope_sin = cos, sin  # type: ignore[assignment]
        if isinstance(model.embed_tokens, QuantEmbedding):
            model.embed_tokens.out_dtype = dtype
    info = describe(model, method, str(dtype).removeprefix("torch."), source_types)
    return model, hf_config, info
