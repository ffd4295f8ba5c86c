"""The Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2) over a flat varlen batch.

Differences from transformers' module, all for speed: q/k/v and gate/up are fused into one
matmul each; the batch is one flat run of tokens from many sequences (prompt chunks and decode
tokens together) with the KV cache paged; logits are computed only for the rows that sample.
The arithmetic is otherwise the same (float32 RMSNorm, rotate-half RoPE), so greedy outputs
match transformers' `generate()` token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from triode.engine.models.linear import Linear, linear
from triode.engine.runner.attention import AttentionMetadata


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    hidden_act: str

    @classmethod
    def from_hf(cls, hf) -> LlamaConfig:
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        act = getattr(hf, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported activation {act!r} (Llama-family models use silu)")
        return cls(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=hf.rms_norm_eps,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            # Qwen2 has q/k/v biases and no `attention_bias` field.
            attention_bias=bool(getattr(hf, "attention_bias", hf.model_type == "qwen2")),
            hidden_act=act,
        )


def rope_tables(hf_config, head_dim: int, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_positions, head_dim] in float32, computed as transformers does
    (including Llama 3 / linear / YaRN scaling, via its own init functions)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    rope_type = (params or {}).get("rope_type", (params or {}).get("type", "default"))
    if rope_type == "default":
        theta = (params or {}).get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        )
        scaling = 1.0
    else:
        if rope_type.startswith("dynamic"):
            raise ValueError("dynamic RoPE scaling is not supported")
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LlamaLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.qkv_proj = Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        cfg = self.cfg
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(self.input_norm(x))
        # RoPE on q and k together: [T, H + KVH, D].
        qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, -1, cfg.head_dim)
        qk = apply_rope(qk, cos, sin)
        q = qk[:, : cfg.num_heads]
        k = qk[:, cfg.num_heads :]
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        o = attn.attend(q, k, v, k_cache, v_cache, self.scale)
        x = x + self.o_proj(o.reshape(num_tokens, self.q_size))
        gate_up = self.gate_up_proj(self.post_norm(x))
        gate, up = gate_up.chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [T, heads, D] with cos/sin [T, D] (transformers' layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig, cos: torch.Tensor, sin: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(LlamaLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.onednn = False
        # The fused decode step (engine.models.fused_decode): on where the model supports it;
        # tests turn it off to compare with the module path.
        self.fused_decode_enabled = True
        self._fused: tuple[list, object] | None = None  # (the KV caches it was built for, it)
        self._fused_supported: bool | None = None
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm."""
        x = self.embed_tokens(input_ids)
        fused = self._fused_decode(kv_caches, attn, x)
        if fused is not None:
            return fused.step(x, positions, attn)
        cos = self.rope_cos[positions].to(x.dtype)
        sin = self.rope_sin[positions].to(x.dtype)
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = layer(x, cos, sin, k_cache, v_cache, attn)
        return self.norm(x)

    def _fused_decode(
        self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], attn: AttentionMetadata, x
    ):
        """The fused step for this step, or None (module path): steps of a model and backend
        that support it whose rows it accepts (decode rows, and prompt rows up to a bound)."""
        if not self.fused_decode_enabled or x.device.type != "cpu":
            return None
        if self._fused is None or self._fused[0] is not kv_caches:
            from triode.engine.models.fused_decode import FusedDecode

            if self._fused_supported is None:
                self._fused_supported = FusedDecode.supports(self, attn.backend.name)
            if not self._fused_supported:
                return None
            self._fused = (kv_caches, FusedDecode(self, kv_caches))
        fused = self._fused[1]
        return fused if fused.accepts(x.shape[0], attn) else None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:  # tied to the (float) embedding
            return linear(hidden, self.embed_tokens.weight, None, self.onednn).float()
        return self.lm_head(hidden).float()

    def use_onednn(self, enabled: bool) -> None:
        """Route every matmul (layers and LM head) through oneDNN on the CPU."""
        self.onednn = enabled
        for module in self.modules():
            if isinstance(module, Linear):
                module.onednn = enabled

    # ---- weights -----------------------------------------------------------------------------
    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load transformers-named weights, fusing q/k/v and gate/up."""
        cfg = self.cfg

        def take(name: str) -> torch.Tensor:
            try:
                return tensors.pop(name)
            except KeyError:
                raise ValueError(f"weight {name!r} missing from the checkpoint") from None

        with torch.no_grad():
            self.embed_tokens.weight.copy_(take("model.embed_tokens.weight"))
            self.norm.weight.copy_(take("model.norm.weight"))
            if self.lm_head is not None:
                self.lm_head.weight.copy_(take("lm_head.weight"))
            else:
                tensors.pop("lm_head.weight", None)
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                layer.input_norm.weight.copy_(take(p + "input_layernorm.weight"))
                layer.post_norm.weight.copy_(take(p + "post_attention_layernorm.weight"))
                layer.qkv_proj.weight.copy_(
                    torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
                )
                if cfg.attention_bias:
                    layer.qkv_proj.bias.copy_(
                        torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
                    )
                layer.o_proj.weight.copy_(take(p + "self_attn.o_proj.weight"))
                layer.gate_up_proj.weight.copy_(
                    torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
                )
                layer.down_proj.weight.copy_(take(p + "mlp.down_proj.weight"))
        leftover = [k for k in tensors if "rotary_emb" not in k]
        if leftover:
            raise ValueError(f"unexpected weights in the checkpoint: {leftover[:5]}")
