"""The default `quantization="auto"`: a GGUF file (the bundled model) is served as it is
quantized, a float checkpoint stays float, and a machine without the CPU kernels still serves
the GGUF file (de-quantized) instead of failing to start."""

from __future__ import annotations

import pytest

from triode.engine.config import EngineConfig
from triode.engine.runner.model_runner import ModelRunner
from triode.kernels import cpu_quant


def runner(folder, **options) -> ModelRunner:
    # A fixed switch-over: these tests are about which weights load, not about timing kernels.
    config = EngineConfig(num_kv_blocks=4, quant_direct_max_rows=8, **options)
    return ModelRunner(config, folder)


def test_the_default_is_auto():
    assert EngineConfig().quantization == "auto"


@pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler")
def test_auto_keeps_a_gguf_files_blocks_and_a_float_checkpoints_floats(bundled_folder, tiny_folder):
    info = runner(bundled_folder).weights_info
    assert info.method == "gguf" and info.source_types.get("Q4_1", 0) > 100, info
    assert info.weight_bytes < 120e6, info
    assert runner(tiny_folder).weights_info.method == "none"


def test_auto_serves_float_weights_without_the_cpu_kernels(bundled_folder, monkeypatch, caplog):
    monkeypatch.setattr(cpu_quant, "is_available", lambda: False)
    with caplog.at_level("WARNING"):
        info = runner(bundled_folder).weights_info
    assert info.method == "none" and info.weight_bytes > 500e6, info
    assert "no C compiler" in caplog.text
    with pytest.raises(ValueError, match="needs a C compiler"):
        runner(bundled_folder, quantization="gguf")
