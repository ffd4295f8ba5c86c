"""The attention backend is an object chosen once at engine start: reading a config compiles
nothing; every layer calls the chosen object (no name is dispatched per call)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triode.engine import LLM, SamplingParams
from triode.engine.runner.attention import resolve_attention_backend
from triode.kernels import cpu_decode
from triode.kernels.backends import CpuBackend, TorchBackend

ROOT = Path(__file__).resolve().parents[2]


def test_reading_the_config_builds_no_kernel():
    script = (
        "import sys\n"
        "from triode.engine.config import EngineConfig\n"
        "c = EngineConfig(attention_backend='auto')\n"
        "c.resolve_device()\n"
        "assert 'triode.kernels.cpu_decode' not in sys.modules, 'config imported the C kernel'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_resolution():
    cpu = torch.device("cpu")
    assert type(resolve_attention_backend("torch", cpu, torch.float32)) is TorchBackend
    if cpu_decode.is_available():
        assert type(resolve_attention_backend("auto", cpu, torch.float32)) is CpuBackend
    for half in (torch.bfloat16, torch.float16):  # the C kernel reads 16-bit caches too
        expected = CpuBackend if cpu_decode.is_available() else TorchBackend
        assert type(resolve_attention_backend("auto", cpu, half)) is expected
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_attention_backend("magic", cpu, torch.float32)


class CountingBackend(TorchBackend):
    name = "counting"

    def __init__(self) -> None:
        self.calls = {"plan": 0, "write": 0, "attend": 0}

    def plan(self, *args):
        self.calls["plan"] += 1
        return super().plan(*args)

    def write_kv_cache(self, *args):
        self.calls["write"] += 1
        super().write_kv_cache(*args)

    def paged_attention(self, *args):
        self.calls["attend"] += 1
        return super().paged_attention(*args)


def test_every_layer_calls_the_resolved_object(tiny_folder, monkeypatch):
    backend = CountingBackend()
    monkeypatch.setattr(
        "triode.engine.runner.model_runner.resolve_attention_backend", lambda *a: backend
    )
    llm = LLM(model=str(tiny_folder), num_kv_blocks=32)
    assert llm.engine.runner.attention is backend
    out = llm.generate(
        [{"prompt_token_ids": list(range(100, 110))}],
        SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
        use_tqdm=False,
    )
    assert len(out[0].outputs[0].token_ids) == 4
    steps = llm.engine.runner.timings.num_steps
    layers = llm.engine.runner.model.cfg.num_layers
    assert backend.calls == {"plan": steps, "write": steps * layers, "attend": steps * layers}
