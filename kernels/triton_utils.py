"""Helpers shared by the Triton launchers (imported only with a Triton kernel module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import triton


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was built by Triton's interpreter (TRITON_INTERPRET=1 at its import)."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def check_device(kernel: object, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and a CUDA one unless the kernel runs in the interpreter."""
    device = tensors[0].device
    for t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"tensors on different devices: {device} and {t.device}")
    if device.type != "cuda" and not is_interpreted(kernel):
        raise ValueError(
            f"Triton kernels need CUDA tensors, got {device}; to run them on the CPU set "
            "TRITON_INTERPRET=1 before the kernel module is first imported"
        )


@dataclass(slots=True)
class KernelLaunch:
    """One prepared kernel call: what a launcher runs, and what `kernels.compile_check` compiles
    ahead of time, so both always see the same arguments."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]  # positional runtime arguments, in the kernel's order
    constexprs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # num_warps, num_stages

    def launch(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)
