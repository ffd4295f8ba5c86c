"""triode: a trio-native LLM serving engine.

The repository's top-level folders are the subpackages of this one import name (the packaging
maps them: `triode.engine`, `triode.kernels`, `triode.streaming`, `triode.web`,
`triode.load_tests`), so installing triode adds exactly one name, `triode`, and a user's own
`engine.py` can never shadow ours.

    from triode import LLM, SamplingParams
    llm = LLM()  # the bundled SmolLM2-135M-Instruct
    print(llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))[0].outputs[0].text)

The public names below are imported on first use, so `import triode.streaming` (or the load
tester) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "LLM": "triode.engine.llm",
    "LLMEngine": "triode.engine.llm_engine",
    "AsyncEngine": "triode.engine.async_engine",
    "EngineConfig": "triode.engine.config",
    "SamplingParams": "triode.engine.sampling.sampling_params",
    "RequestOutput": "triode.engine.outputs",
    "CompletionOutput": "triode.engine.outputs",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
    "__version__",
]

if TYPE_CHECKING:
    from triode.engine.async_engine import AsyncEngine
    from triode.engine.config import EngineConfig
    from triode.engine.llm import LLM
    from triode.engine.llm_engine import LLMEngine
    from triode.engine.outputs import CompletionOutput, RequestOutput
    from triode.engine.sampling.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'triode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
