"""EngineConfig: every knob of the engine in one dataclass, built from CLI flags or keyword args."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")
CPU_LINEAR_CHOICES = ("auto", "onednn", "torch")


@dataclass
class EngineConfig:
    """Configuration of one engine instance.

    `model` is a Hugging Face folder (config.json + safetensors), a `.gguf` file, or None for the
    bundled SmolLM2-135M-Instruct. Sizes left as None are derived at start-up from the model and
    the memory budget (see `resolve`).
    """

    model: str | None = None
    # The name clients use in the API (`model` field); defaults to the folder or file name.
    served_model_name: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    # CPU threads for torch's intra-op pool; None keeps torch's default (all cores).
    num_threads: int | None = None

    # KV cache: fixed-size blocks in a pool. `num_kv_blocks` overrides the size computed from
    # `kv_cache_memory_gib`.
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_gib: float = 4.0
    enable_prefix_caching: bool = True

    # Continuous batching limits.
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None

    # Front-door limits used by the async engine and the server.
    max_num_waiting: int = 1024

    attention_backend: str = "auto"
    # CPU matmuls: auto = oneDNN where available (about 2x torch's default BLAS on AMD CPUs).
    cpu_linear: str = "auto"

    # Where converted GGUF models are cached (None: $XDG_CACHE_HOME/triode or ~/.cache/triode).
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}"
            )
        if self.cpu_linear not in CPU_LINEAR_CHOICES:
            raise ValueError(
                f"cpu_linear must be one of {CPU_LINEAR_CHOICES}, got {self.cpu_linear!r}"
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
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_waiting < 0:
            raise ValueError(f"max_num_waiting must be >= 0, got {self.max_num_waiting}")

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

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolve_attention_backend(self, device: str) -> str:
        """auto: Triton on CUDA; on the CPU the C decode kernel when it builds (float32 only),
        else the pure-torch reference."""
        if self.attention_backend != "auto":
            return self.attention_backend
        if device.startswith("cuda"):
            return "triton"
        if self.dtype == "float32":
            from triode.kernels import cpu_decode

            if cpu_decode.is_available():
                return "cpu"
        return "torch"
