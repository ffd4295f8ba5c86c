"""Triton kernel tests run compiled on a CUDA device, else in Triton's interpreter on the CPU.

Triton decides interpreter-or-compiler when `@triton.jit` runs, i.e. when a kernel module is
first imported, so TRITON_INTERPRET=1 is set here, before any test imports one. If something
imported them earlier in compiled mode, `triton_kernels` re-imports them.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def triton_kernels() -> None:
    """Import the Triton kernel modules in the mode this machine needs (see the module doc)."""
    from triode.kernels import triton_attention, triton_cache
    from triode.kernels.triton_utils import is_interpreted

    for module, kernel_name in (
        (triton_attention, "_paged_attention_kernel"),
        (triton_cache, "_write_kv_cache_kernel"),
    ):
        if not HAS_CUDA and not is_interpreted(getattr(module, kernel_name)):
            importlib.reload(module)
        assert HAS_CUDA or is_interpreted(getattr(module, kernel_name))
