"""ModelRunner: owns the device, the weights and the KV cache; turns a SchedulerOutput into one
forward pass over a flat token batch and samples the next tokens.

It never schedules. Its only host sync per step is reading the sampled ids back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from triode import host
from triode.engine.config import EngineConfig
from triode.engine.core.scheduler import ScheduledRequest, SchedulerOutput
from triode.engine.models import load_model
from triode.engine.models.linear import resolve_cpu_linear
from triode.engine.models.loader import gguf_source
from triode.engine.quant.info import WeightsInfo, describe
from triode.engine.runner.attention import AttentionMetadata, resolve_attention_backend
from triode.engine.sampling.sampler import RowBitmask, Sampler, SamplerOutput, SamplingRow
from triode.engine.spec_decode.rejection import DraftSpan, verify
from triode.engine.structured.manager import StepMasks

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class RunnerOutput:
    # sample id -> token id; for a speculating request, its accepted drafts and one more token.
    sampled: dict[str, int | list[int]]
    logprobs: dict[str, tuple[float, list[tuple[int, float]]]] | None = None


@dataclass(slots=True)
class StepTimings:
    """Cumulative seconds spent in each part of `execute` (for profiling)."""

    prepare: float = 0.0
    forward: float = 0.0
    sample: float = 0.0
    num_steps: int = 0
    num_tokens: int = 0


class ModelRunner:
    def __init__(self, config: EngineConfig, folder: Path) -> None:
        self.config = config
        self.device = torch.device(config.resolve_device())
        self.dtype = _DTYPES[config.dtype]
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)

        self.weights_info = self._load_weights(config, folder)
        self.kv_dtype = resolve_kv_cache_dtype(
            config.kv_cache_dtype, self.device, self.dtype, self.model
        )
        self.attention = resolve_attention_backend(
            config.attention_backend, self.device, self.kv_dtype
        )
        cfg = self.model.cfg
        self.block_size = config.block_size
        # Bytes of K+V per token per layer, and per block over all layers.
        elem = torch.empty((), dtype=self.kv_dtype).element_size()
        self.kv_bytes_per_token = 2 * cfg.num_kv_heads * cfg.head_dim * elem
        block_bytes = self.kv_bytes_per_token * self.block_size * cfg.num_layers
        if config.num_kv_blocks is not None:
            self.num_blocks = config.num_kv_blocks
        else:
            self.num_blocks = max(1, int(config.kv_cache_memory_gib * (1 << 30)) // block_bytes)
        shape = (self.num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (_zeros(shape, self.kv_dtype, self.device), _zeros(shape, self.kv_dtype, self.device))
            for _ in range(cfg.num_layers)
        ]
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}
        self.timings = StepTimings()
        logger.info(self.weights_info.summary())
        logger.info(
            "model on %s (%s, attention: %s, oneDNN linears: %s); KV cache: %d blocks of %d "
            "tokens in %s (%.2f GiB)",
            self.device,
            config.dtype,
            self.attention.name,
            self.model.onednn,
            self.num_blocks,
            self.block_size,
            str(self.kv_dtype).removeprefix("torch."),
            self.num_blocks * block_bytes / (1 << 30),
        )

    def _load_weights(self, config: EngineConfig, folder: Path) -> WeightsInfo:
        """Load the model as `config.quantization` says; returns what is being served."""
        gguf = gguf_source(folder)
        method = config.resolve_quantization(gguf is not None)
        if method == "gguf" and config.quantization == "auto" and not self._can_quantize():
            # NOTE: the default must serve everywhere: without the CPU kernels (no C
            # compiler) a GGUF file is served de-quantized, as `--quantization none` would.
            logger.warning("no C compiler for the quantized CPU kernels: serving float weights")
            method = "none"
        if method == "none":
            self.model, self.hf_config = load_model(folder, self.dtype, self.device)
            self.model.use_onednn(resolve_cpu_linear(config.cpu_linear, self.device, self.dtype))
            return describe(self.model, method, config.dtype)
        if self.device.type == "cuda":
            from triode.engine.quant.cuda import load_cuda_quantized_model

            self.model, self.hf_config, info = load_cuda_quantized_model(
                folder, gguf, method, self.dtype, self.device
            )
            return info
        if method == "fp8":
            raise ValueError("quantization 'fp8' needs a CUDA GPU (Hopper or later)")
        from triode.engine.quant.calibrate import CACHE_FILE as CALIBRATION_FILE
        from triode.engine.quant.calibrate import calibrate
        from triode.engine.quant.model import load_quantized_model

        if not self._can_quantize():
            raise ValueError(
                f"quantization {method!r} needs a C compiler for its CPU kernels; "
                "use --quantization none"
            )
        self.model, self.hf_config, info = load_quantized_model(folder, gguf, method, self.dtype)
        self.model.use_onednn(resolve_cpu_linear(config.cpu_linear, self.device, self.dtype))
        cache = host.cache_dir(config.cache_dir) / CALIBRATION_FILE
        calibrate(self.model, config.quant_direct_max_rows, cache)
        return info

    def _can_quantize(self) -> bool:
        """Whether this device has kernels for quantized weights (CUDA: torch's own)."""
        if self.device.type == "cuda":
            return True
        from triode.kernels import cpu_quant

        return cpu_quant.is_available()

    @property
    def max_position_embeddings(self) -> int:
        return self.model.cfg.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    def _generator(self, sample_id: str, seed: int) -> torch.Generator:
        gen = self._generators.get(sample_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self._generators[sample_id] = gen
        return gen

    @torch.inference_mode()
    def execute(
        self,
        sched: SchedulerOutput,
        masks: StepMasks | None = None,
        draft_probs: Mapping[str, torch.Tensor] | None = None,
    ) -> RunnerOutput:
        """One forward pass and sampling. `masks` (constrained rows' grammar bitmasks) are
        being filled in the background meanwhile; they are waited for only before sampling.
        `draft_probs[request_id]` is a draft model's q for that request's drafts ([k, vocab],
        at least as many rows as the step verifies); a speculating request without one has
        drafts that are certain (n-gram: q one-hot)."""
        for request_id in sched.finished_request_ids:
            self._generators.pop(request_id, None)
        if sched.blocks_to_copy:
            self._copy_blocks(sched.blocks_to_copy)
        if sched.is_empty:
            return RunnerOutput({})

        t0 = time.perf_counter()
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        q_lens: list[int] = []
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        logits_rows: list[int] = []
        rows: list[SamplingRow] = []
        row_ids: list[str] = []
        verify_rows: list[int] = []  # hidden rows the speculating requests verify
        verify_sampling: list[SamplingRow] = []
        spans: list[DraftSpan] = []
        span_ids: list[str] = []
        span_probs: list[torch.Tensor | None] = []
        for item in sched.scheduled:
            n = len(item.token_ids)
            start = item.start_pos
            blocks = item.block_ids
            input_ids.extend(item.token_ids)
            positions.extend(range(start, start + n))
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, start + n))
            q_lens.append(n)
            seq_lens.append(start + n)
            tables.append(blocks)
            if item.spec_token_ids:
                self._add_verification(item, len(input_ids), verify_rows, verify_sampling, spans)
                span_ids.append(item.request_id)
                q = draft_probs.get(item.request_id) if draft_probs is not None else None
                span_probs.append(None if q is None else q[: len(item.spec_token_ids)])
            elif item.sample_ids:
                last_row = len(input_ids) - 1
                params = item.sampling_params
                for index, sample_id in enumerate(item.sample_ids):
                    gen = None
                    if params.seed is not None and not params.is_greedy:
                        gen = self._generator(sample_id, params.seed + index)
                    logits_rows.append(last_row)
                    row_ids.append(sample_id)
                    rows.append(
                        SamplingRow(
                            params,
                            item.prompt_token_ids,
                            item.output_token_ids,
                            item.eos_token_id,
                            gen,
                        )
                    )
        attn = AttentionMetadata.build(
            q_lens,
            seq_lens,
            tables,
            slots,
            bs,
            self.kv_bytes_per_token,
            self.device,
            self.attention,
        )
        ids_t = torch.tensor(input_ids, dtype=torch.int64).to(self.device, non_blocking=True)
        pos_t = torch.tensor(positions, dtype=torch.int64).to(self.device, non_blocking=True)
        t1 = time.perf_counter()

        hidden = self.model(ids_t, pos_t, self.kv_caches, attn)
        out = RunnerOutput({})
        t2 = time.perf_counter()
        if rows:
            idx = torch.tensor(logits_rows, dtype=torch.int64).to(self.device, non_blocking=True)
            logits = self.model.compute_logits(hidden.index_select(0, idx))
            bitmask = _row_bitmask(masks, row_ids) if masks is not None else None
            result = self._sample(logits, rows, bitmask)
            out.sampled = dict(zip(row_ids, result.token_ids))
            if any(lp is not None for lp in result.logprobs):
                out.logprobs = {
                    sid: lp for sid, lp in zip(row_ids, result.logprobs) if lp is not None
                }
        if spans:
            idx = torch.tensor(verify_rows, dtype=torch.int64).to(self.device, non_blocking=True)
            logits = self.model.compute_logits(hidden.index_select(0, idx))
            accepted = self._keeping_generators(
                [s.generator for s in spans],
                lambda: verify(logits, verify_sampling, spans, span_probs),
            )
            out.sampled.update(zip(span_ids, accepted))
        t3 = time.perf_counter()
        timings = self.timings
        timings.prepare += t1 - t0
        timings.forward += t2 - t1
        timings.sample += t3 - t2
        timings.num_steps += 1
        timings.num_tokens += len(input_ids)
        return out

    def _add_verification(
        self,
        item: ScheduledRequest,
        num_rows: int,
        verify_rows: list[int],
        verify_sampling: list[SamplingRow],
        spans: list[DraftSpan],
    ) -> None:
        """The k+1 logits rows of a speculating request: row j is sampled as if its output
        already held drafts[:j] (min_tokens and penalties see them)."""
        drafts = item.spec_token_ids
        k = len(drafts)
        params = item.sampling_params
        gen = None
        if params.seed is not None and not params.is_greedy:
            gen = self._generator(item.request_id, params.seed)
        spans.append(DraftSpan(len(verify_rows), list(drafts), gen, params.is_greedy))
        verify_rows.extend(range(num_rows - k - 1, num_rows))
        for j in range(k + 1):
            verify_sampling.append(
                SamplingRow(
                    params,
                    item.prompt_token_ids,
                    [*item.output_token_ids, *drafts[:j]],
                    item.eos_token_id,
                    gen,
                )
            )

    def _sample(
        self, logits: torch.Tensor, rows: list[SamplingRow], bitmask: RowBitmask | None = None
    ) -> SamplerOutput:
        """The sampler, leaving seeded generators as they were if it raises."""
        return self._keeping_generators(
            [row.generator for row in rows], lambda: self.sampler(logits, rows, bitmask)
        )

    @staticmethod
    def _keeping_generators(generators: list[torch.Generator | None], draw: Callable[[], _T]) -> _T:
        """Run `draw`, leaving the seeded generators as they were if it raises.

        NOTE: the engine runs the rows of a failed step again (engine/step_isolation.py); a
        seeded sample must then draw what it would have drawn, as if the failed run had not
        happened (a few microseconds per seeded row and step)."""
        seeded = [gen for gen in generators if gen is not None]
        states = [gen.get_state() for gen in seeded]
        try:
            return draw()
        except BaseException:
            for gen, state in zip(seeded, states):
                gen.set_state(state)
            raise

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]


def resolve_kv_cache_dtype(
    choice: str, device: torch.device, dtype: torch.dtype, model: torch.nn.Module
) -> torch.dtype:
    """The KV cache's dtype for `choice` (EngineConfig.kv_cache_dtype). auto: float16 on the CPU
    when every linear of the decoder layers holds quantized weights, else the model's dtype.

    NOTE: half the bytes for decode attention to read and for the KV write to fault in, where
    the weights' own rounding is far larger than a 16-bit cache's. float16, not bfloat16: over
    2,048 tokens of the bundled model (float32 activations, BENCHMARKS.md "16-bit KV cache"), a
    float16 cache kept 99.90% of the float32 cache's top-1 tokens and its perplexity to 0.003%,
    bf16 99.32% and 0.2%; the C kernels read both as fast. A float model keeps its dtype, so
    its greedy tokens still match transformers exactly."""
    if choice != "auto":
        return _DTYPES[choice]
    if device.type == "cpu" and _all_linears_quantized(model):
        return torch.float16
    return dtype


def _all_linears_quantized(model: torch.nn.Module) -> bool:
    from triode.engine.quant.linear import QuantLinear

    names = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    layers = getattr(model, "layers", None) or []
    return bool(layers) and all(
        isinstance(getattr(layer, name, None), QuantLinear) for layer in layers for name in names
    )


def _row_bitmask(masks: StepMasks, row_ids: list[str]) -> RowBitmask | None:
    """The step's grammar masks for the rows sampled now. NOTE: a failed step runs again in
    parts (engine/step_isolation.py); a part holds only some of the masked samples."""
    position = {sample_id: i for i, sample_id in enumerate(row_ids)}
    words = masks.wait()
    keep = [i for i, sample_id in enumerate(masks.sample_ids) if sample_id in position]
    if not keep:
        return None
    if len(keep) < len(masks.sample_ids):
        words = words[keep]
    return RowBitmask([position[masks.sample_ids[i]] for i in keep], words)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed cache tensor. On the CPU its pages stay untouched (calloc'd, zero-mapped by the
    OS) until a block is first written, so a large KV budget costs memory only as it is used.
    Zeros, not garbage: a padded attention slot must never hold a NaN."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    import numpy as np

    if dtype == torch.bfloat16:
        return torch.from_numpy(np.zeros(shape, dtype=np.uint16)).view(torch.bfloat16)
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[dtype]
    return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
