"""Every Triton kernel compiles to a Hopper (sm_90) cubin on this machine, GPU or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_sm90(tmp_path) -> None:
    # A subprocess: this test process may hold the interpreter's stand-ins for the kernels, and a
    # fresh Triton cache makes ptxas really run.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--arch", "90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    attention = [line for line in lines if "paged_attention" in line]
    cache = [line for line in lines if "write_kv_cache" in line]
    assert len(attention) == 5 and len(cache) == 2, proc.stdout
    assert all(line.startswith("sm_90") and "cubin 0 B" not in line for line in lines)
    # 16-bit caches must reach the tensor cores (wgmma / mma), not fall back to FMA loops.
    assert all("tensor cores: yes" in line for line in attention if "float32" not in line)
