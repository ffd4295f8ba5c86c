"""Importing `kernels` never imports Triton; compiled kernels refuse CPU tensors clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from triode import kernels
    import triode.engine.runner.attention
    assert "triton" not in sys.modules, sorted(m for m in sys.modules if "triton" in m)
    assert not torch.cuda.is_initialized()
    x = torch.zeros(2, 1, 16)
    try:
        kernels.write_kv_cache(x, x, torch.zeros(1, 16, 1, 16), torch.zeros(1, 16, 1, 16),
                               torch.zeros(2, dtype=torch.int64), backend="triton")
    except ValueError as e:
        print("refused:", e)
    """
)


def test_lazy_triton_import_and_cpu_refusal() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: Triton kernels need CUDA tensors" in proc.stdout
