"""The engine core: requests, scheduler, KV-cache manager, model runner, sampler, models,
the synchronous LLMEngine and the offline LLM API.

    from triode.engine import LLM, SamplingParams
    llm = LLM()  # the bundled SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
"""

from triode.engine.config import EngineConfig
from triode.engine.errors import ContextLengthError
from triode.engine.llm import LLM
from triode.engine.llm_engine import LLMEngine
from triode.engine.outputs import CompletionOutput, RequestOutput
from triode.engine.sampling.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "CompletionOutput",
    "ContextLengthError",
    "EngineConfig",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
]
