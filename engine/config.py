"""EngineConfig: every knob of the engine in one dataclass, built from CLI flags or keyword args.

Each field's docstring is its `--help` text on the command line (web/cli.py reads them with
tyro), so document a new field there, in words a user understands.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from triode.engine.spec_decode.config import SpeculativeConfig

DType = Literal["float32", "float16", "bfloat16"]
Quantization = Literal["auto", "none", "gguf", "int8", "int4", "fp8"]
AttentionBackend = Literal["auto", "torch", "cpu", "triton"]
CpuLinear = Literal["auto", "onednn", "torch"]
KVCacheDType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DType)
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
CPU_LINEAR_CHOICES: tuple[str, ...] = get_args(CpuLinear)
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KVCacheDType)


@dataclass
class EngineConfig:
    """The engine: the model, the KV cache and the batching limits (sizes left unset are
    derived at start-up from the model and the memory budget)."""

    model: str | None = None
    """A Hugging Face folder (config.json, *.safetensors, tokenizer files) or a .gguf file.
    Unset: the bundled SmolLM2-135M-Instruct. Models are never downloaded."""
    served_model_name: str | None = None
    """The name clients use in the API's `model` field (default: the folder or file name)."""
    dtype: DType = "float32"
    """Data type of activations, the KV cache and float weights (quantized weights keep their
    own formats)."""
    quantization: Quantization = "auto"
    """Weights: auto (a .gguf file's own blocks, as the bundled model's Q4_1; a float
    checkpoint's floats), none (a .gguf file de-quantized to --dtype: with float32, output
    that does not depend on how requests are batched), gguf, int8 and int4 (float weights
    quantized on load, groups of 32), fp8 (CUDA, Hopper and later)."""
    quant_direct_max_rows: int | None = None
    """Quantized linears: steps of up to this many tokens run the quantized kernel (float32
    activations), bigger ones the bf16 path (AMX tiles, or a dense GEMM over de-quantized
    weights; default: measured per weight shape at start, never below 4). A value above --max-num-batched-tokens keeps every step on the
    quantized kernel: a request's tokens then never depend on what it is batched with."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when available, else the CPU), cpu, cuda, cuda:1, ..."""
    seed: int = 0
    """Random seed of the engine (sampling of requests that bring no seed of their own)."""
    num_threads: int | None = None
    """CPU threads for torch's operations (default: torch's, all cores)."""

    block_size: int = 16
    """Tokens per KV-cache block (a power of two)."""
    num_kv_blocks: int | None = None
    """KV-cache blocks; overrides the number computed from --kv-cache-memory-gib."""
    kv_cache_memory_gib: float = 4.0
    """Memory for the KV cache, in GiB (on the CPU it is committed only as blocks are used)."""
    kv_cache_dtype: KVCacheDType = "auto"
    """Data type of the KV cache: auto (on the CPU float16 when every linear of the model is
    quantized, as with a .gguf file or --quantization int8|int4: half the bytes for decode
    attention to read; else --dtype, so float models keep exact float32 numbers), float32,
    bfloat16 or float16. A 16-bit cache holds twice the blocks in the same memory; K/V are
    rounded to it when written (float16: values past +-65504 become infinite), attention runs
    in float32 over them."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of prompt prefixes that earlier requests computed."""

    max_num_seqs: int = 128
    """Sequences in one batch, at most."""
    max_num_batched_tokens: int = 512
    """Tokens in one step (prompt chunks plus decode tokens), at most."""
    prefill_tokens_per_request: float = 2.0
    """While requests are decoding, a step carries at most this many prompt tokens per
    unfinished request (running or waiting), and at least --min-prefill-tokens: a few new
    prompts then barely lengthen the running streams' gaps between tokens, while a long queue
    of prompts still fills --max-num-batched-tokens. 0: no cap (prompt chunks fill the step)."""
    min_prefill_tokens: int = 32
    """The prompt tokens a step may always carry beside decodes, whatever
    --prefill-tokens-per-request gives."""
    max_model_len: int | None = None
    """Context length: prompt plus completion tokens (default: the model's, capped by the KV
    cache)."""

    max_num_waiting: int = 1024
    """Requests that may wait for a place in the batch; more get 503 with Retry-After (a single
    request with more prompts than this gets 400)."""
    num_input_workers: int = 2
    """Threads that apply chat templates, tokenize and check requests, off the event loop (each
    with its own tokenizer)."""

    engine_process: bool = True
    """Run the engine core (scheduler and model) in a process of its own, so that the server's
    event loop and the model's steps never wait for each other's Python (off: a thread of the
    server's process)."""
    adapt_threads: bool = True
    """Without --num-threads: before a step, use only the cores other processes leave free
    (re-measured every half second), so a busy machine slows the model instead of stalling it."""

    attention_backend: AttentionBackend = "auto"
    """Attention kernels: auto (Triton on CUDA; on the CPU a small C kernel when it builds,
    else torch), torch, cpu, triton."""
    cpu_linear: CpuLinear = "auto"
    """CPU matrix multiplies: auto (oneDNN where available, about 2x torch's default BLAS on
    AMD CPUs), onednn, torch."""

    speculative_config: str | None = None
    """Speculative decoding, as JSON, spelled as vLLM spells it: '{"method": "ngram",
    "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}' or
    '{"method": "draft_model", "model": PATH, "num_speculative_tokens": 4}' (a draft with the
    same tokenizer; add "quantization": "int4" to quantize it on load, "draft_num_kv_blocks":
    N for its KV cache); add "disable_by_batch_size": N to pause it from N running+waiting
    requests on (default 4). LLM(speculative_config=...) also takes the dict. Off when unset."""

    cache_dir: str | None = None
    """Where converted GGUF models are cached (default: $XDG_CACHE_HOME/triode or
    ~/.cache/triode)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        if self.quant_direct_max_rows is not None and self.quant_direct_max_rows < 0:
            raise ValueError(
                f"quant_direct_max_rows must be >= 0, got {self.quant_direct_max_rows}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}"
            )
        if self.cpu_linear not in CPU_LINEAR_CHOICES:
            raise ValueError(
                f"cpu_linear must be one of {CPU_LINEAR_CHOICES}, got {self.cpu_linear!r}"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}"
            )
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if not self.prefill_tokens_per_request >= 0:  # NOTE: `not >=` also rejects NaN
            raise ValueError(
                f"prefill_tokens_per_request must be >= 0, got {self.prefill_tokens_per_request}"
            )
        if self.min_prefill_tokens < 1:
            raise ValueError(f"min_prefill_tokens must be >= 1, got {self.min_prefill_tokens}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_waiting < 1:
            raise ValueError(f"max_num_waiting must be >= 1, got {self.max_num_waiting}")
        if self.speculative_config is not None:
            from triode.engine.spec_decode.config import SpeculativeConfig

            # NOTE: kept as JSON text (the CLI's form; a dict from LLM(...) is converted), so
            # the config stays one plain, printable dataclass; `speculative` parses it.
            parsed = SpeculativeConfig.parse(self.speculative_config)  # type: ignore[arg-type]
            self.speculative_config = parsed.to_json()
        if self.num_input_workers < 1:
            raise ValueError(f"num_input_workers must be >= 1, got {self.num_input_workers}")

    @property
    def speculative(self) -> SpeculativeConfig | None:
        """The parsed speculative_config, or None when speculation is off."""
        if self.speculative_config is None:
            return None
        from triode.engine.spec_decode.config import SpeculativeConfig

        return SpeculativeConfig.parse(self.speculative_config)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> EngineConfig:
        """Build a config, rejecting unknown keyword arguments with a clear message."""
        unknown = set(kwargs) - cls.field_names()
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)  # type: ignore[arg-type]

    def resolve_quantization(self, is_gguf: bool) -> str:
        """The weights' method for a model that is (or is not) a GGUF file."""
        if self.quantization == "auto":
            return "gguf" if is_gguf else "none"
        if self.quantization == "gguf" and not is_gguf:
            raise ValueError("quantization 'gguf' needs a .gguf model file")
        return self.quantization

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
