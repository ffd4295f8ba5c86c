"""Linear layers whose CPU matmul can go through oneDNN instead of torch's default BLAS.

NOTE: on the AMD EPYC machines we serve from, torch's default fp32 matmul (MKL sgemm) reaches
about half of what oneDNN's JIT kernels do for the same float32 maths (measured 137 vs 280
GFLOP/s at 64 rows; see BENCHMARKS.md). `torch.ops.mkldnn._linear_pointwise` is the oneDNN
linear that torch's own inductor uses on CPUs; results are ordinary float32 (no reduced
precision), so greedy outputs still match transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_cpu_linear(choice: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether linears should use oneDNN: auto means yes for float32/bfloat16 on the CPU."""
    if device.type != "cpu" or choice == "torch":
        return False
    if choice == "onednn":
        if not onednn_available():
            raise ValueError("cpu_linear='onednn' but this torch build has no oneDNN linear")
        return True
    return onednn_available() and dtype in (torch.float32, torch.bfloat16)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool
) -> torch.Tensor:
    if onednn:
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear with a switchable CPU matmul (set `onednn` once, at model load)."""

    onednn: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.onednn)
