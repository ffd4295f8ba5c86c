"""The engine core and its public API.

Callers outside the engine (the server in web/, scripts) use only the names exported here:
the trio actor `AsyncEngine` with its `EngineState`, `ModelInfo` and `InputProcessor`; the
request types (`SamplingParams`, `EngineInput`); the typed errors; the offline `LLM`.
Everything else (scheduler, KV cache, model runner, sampler, models) is internal.

    from triode.engine import LLM, SamplingParams
    llm = LLM()  # the bundled SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module; imported on first use, so `from triode.engine import EngineConfig` (the
# command line, before it binds its port) does not pay for importing torch.
_PUBLIC = {
    "AsyncEngine": "async_engine",
    "EngineState": "async_engine",
    "EngineConfig": "config",
    "ContextLengthError": "errors",
    "EngineDeadError": "errors",
    "EngineError": "errors",
    "EngineNotReadyError": "errors",
    "EngineStoppedError": "errors",
    "InvalidRequestError": "errors",
    "QueueFullError": "errors",
    "InputProcessor": "input_processor",
    "Preprocessor": "input_processor",
    "EngineInput": "inputs",
    "ModelInfo": "inputs",
    "make_engine_input": "inputs",
    "GenerateOptions": "generate",
    "run_generate": "generate",
    "LLM": "llm",
    "LLMEngine": "llm_engine",
    "EngineStats": "metrics",
    "CompletionOutput": "outputs",
    "RequestOutput": "outputs",
    "SamplingParams": "sampling.sampling_params",
    "StructuredOutputsParams": "sampling.structured_outputs",
    "check_json_schema": "structured.json_schema",
    "TOOL_CALL_FORMATS": "tool_calls",
    "ToolCallFormat": "tool_calls",
    "detect_tool_call_format": "tool_calls",
    "tool_call_grammar": "tool_calls",
}

__all__ = [
    "LLM",
    "TOOL_CALL_FORMATS",
    "AsyncEngine",
    "CompletionOutput",
    "ContextLengthError",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineInput",
    "EngineNotReadyError",
    "EngineState",
    "EngineStats",
    "EngineStoppedError",
    "GenerateOptions",
    "InputProcessor",
    "InvalidRequestError",
    "LLMEngine",
    "ModelInfo",
    "Preprocessor",
    "QueueFullError",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "ToolCallFormat",
    "check_json_schema",
    "detect_tool_call_format",
    "make_engine_input",
    "run_generate",
    "tool_call_grammar",
]

if TYPE_CHECKING:
    from triode.engine.async_engine import AsyncEngine, EngineState
    from triode.engine.config import EngineConfig
    from triode.engine.errors import (
        ContextLengthError,
        EngineDeadError,
        EngineError,
        EngineNotReadyError,
        EngineStoppedError,
        InvalidRequestError,
        QueueFullError,
    )
    from triode.engine.generate import GenerateOptions, run_generate
    from triode.engine.input_processor import InputProcessor, Preprocessor
    from triode.engine.inputs import EngineInput, ModelInfo, make_engine_input
    from triode.engine.llm import LLM
    from triode.engine.llm_engine import LLMEngine
    from triode.engine.metrics import EngineStats
    from triode.engine.outputs import CompletionOutput, RequestOutput
    from triode.engine.sampling.sampling_params import SamplingParams
    from triode.engine.sampling.structured_outputs import StructuredOutputsParams
    from triode.engine.structured.json_schema import check_json_schema
    from triode.engine.tool_calls import (
        TOOL_CALL_FORMATS,
        ToolCallFormat,
        detect_tool_call_format,
        tool_call_grammar,
    )


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'triode.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"triode.engine.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
