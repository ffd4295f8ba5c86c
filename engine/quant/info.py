"""What weights a model is served with: the method, the formats, the bytes (for the startup log
and /v1/models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import torch
from torch import nn

from triode.kernels.cpu_quant import QuantWeight

WeightSummary: TypeAlias = tuple[int, str, int, int]  # identity, format, parameters, bytes


@dataclass(frozen=True, slots=True)
class WeightsInfo:
    """Plain data (it crosses the engine boundary)."""

    method: str  # "none" (float weights), "gguf" (the file's own blocks), "int8", "int4", "fp8"
    dtype: str  # activations and float weights (the KV cache: EngineConfig.kv_cache_dtype)
    num_parameters: int
    weight_bytes: int  # resident bytes of every weight, tied ones counted once
    # Weight tensors per storage format, e.g. {"int4 g32 +offset": 210, "float32": 61}.
    formats: dict[str, int] = field(default_factory=dict)
    # Tensors per type in the source file (GGUF types such as {"Q4_1": 210}), if any.
    source_types: dict[str, int] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(1, self.num_parameters)

    def as_dict(self) -> dict:
        return {
            "quantization": self.method,
            "dtype": self.dtype,
            "num_parameters": self.num_parameters,
            "weight_bytes": self.weight_bytes,
            "bits_per_weight": round(self.bits_per_weight, 3),
            "formats": dict(self.formats),
            "source_types": dict(self.source_types),
        }

    def summary(self) -> str:
        formats = ", ".join(f"{n} {name}" for name, n in sorted(self.formats.items()))
        source = ""
        if self.source_types:
            source = " from " + ", ".join(f"{n} {t}" for t, n in sorted(self.source_types.items()))
        return (
            f"weights: {self.method}, {self.weight_bytes / 1e6:.1f} MB "
            f"({self.bits_per_weight:.2f} bits/weight over {self.num_parameters / 1e6:.1f}M "
            f"parameters; {formats}{source})"
        )


def format_name(weight: QuantWeight | torch.Tensor) -> str:
    if isinstance(weight, QuantWeight):
        offset = " +offset" if weight.offsets is not None else ""
        group = "channel" if weight.group_size == weight.in_features else f"g{weight.group_size}"
        return f"int{weight.bits} {group}{offset}"
    return str(weight.dtype).removeprefix("torch.")


def summarise(weight: QuantWeight | torch.Tensor) -> WeightSummary:
    """(identity, format, parameters, bytes) of one stored weight."""
    if isinstance(weight, QuantWeight):
        numel = weight.out_features * weight.in_features
        return id(weight.codes), format_name(weight), numel, weight.nbytes
    return weight.data_ptr(), format_name(weight), weight.numel(), weight.nbytes


def describe(
    model: nn.Module, method: str, dtype: str, source_types: dict[str, int] | None = None
) -> WeightsInfo:
    """Count a model's weights: its parameters, and what modules holding other storage report
    through a `weight_summaries()` method (quantized linears and embeddings)."""
    seen: set[int] = set()
    formats: dict[str, int] = {}
    num_parameters = num_bytes = 0
    for module in model.modules():
        summaries = [summarise(p) for p in module.parameters(recurse=False)]
        if hasattr(module, "weight_summaries"):
            summaries += module.weight_summaries()
        for key, name, numel, nbytes in summaries:
            if key in seen:  # tied weights count once
                continue
            seen.add(key)
            num_parameters += numel
            num_bytes += nbytes
            formats[name] = formats.get(name, 0) + 1
    return WeightsInfo(method, dtype, num_parameters, num_bytes, formats, dict(source_types or {}))
