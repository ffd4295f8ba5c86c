"""Model implementations and loading from a local Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from triode.engine.models.llama import LlamaConfig, LlamaForCausalLM, rope_tables

# transformers architecture names we serve with the Llama implementation.
LLAMA_ARCHITECTURES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
}

__all__ = [
    "LLAMA_ARCHITECTURES",
    "LlamaConfig",
    "LlamaForCausalLM",
    "check_architecture",
    "load_model",
    "read_safetensors",
]


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def check_architecture(hf_config) -> None:
    archs = set(getattr(hf_config, "architectures", None) or [])
    if not archs & LLAMA_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {sorted(archs)}; supported: {sorted(LLAMA_ARCHITECTURES)}"
        )


def load_model(
    folder: Path, dtype: torch.dtype, device: torch.device, max_positions: int | None = None
):
    """Build the model for `folder` (config.json + safetensors) on `device` in `dtype`.

    Returns (model, hf_config).
    """
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(folder))
    check_architecture(hf_config)
    cfg = LlamaConfig.from_hf(hf_config)
    positions = max_positions or cfg.max_position_embeddings
    cos, sin = rope_tables(hf_config, cfg.head_dim, positions)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, cos, sin)
    model = model.to_empty(device="cpu")
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    model.load_hf_state_dict(read_safetensors(folder))
    return model.to(device=device, dtype=dtype).eval(), hf_config
