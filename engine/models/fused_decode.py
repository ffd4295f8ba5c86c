"""The fused step: a step of a quantized Llama-family model on the CPU runs all its layers in
one C call (kernels/cpu/decode_step.c) instead of ~30 torch operations and 5 kernel calls per
layer dispatched from Python.

Used when every linear of the model holds quantized weights (the GGUF default, `--quantization
int8|int4`), the attention backend is the C decode kernel's ("cpu": float32, bfloat16 or
float16 caches; the KV write rounds to the cache's dtype as torch's `.to` does) and each
linear has a kernel for the step's row count (the direct kernel up to its calibrated rows;
above that only where the AMX tile kernel exists, since the dense bf16 fallback is a torch
GEMM). Decode rows take it always; a step with prompt chunks (or speculative verification
rows) takes it while those rows read at most `max_prompt_positions` context positions in all:
a chunk's rows attend causally to their contexts through the chunk kernel (flash-style, a
block of rows and a tile of positions at a time; kernels/cpu/chunk_attention.h). It calls the
same matmul kernels as the module path, and for decode rows the same attention kernel; norms,
RoPE, SiLU and the chunk kernel are C code whose sums may round differently from torch's
(equal to float rounding; tested in
tests/kernels/test_decode_step.py). Measured on the bundled model: BENCHMARKS.md, issues 13
and 14.
"""

from __future__ import annotations

import ctypes

import torch

from triode.engine.quant.linear import QuantLinear
from triode.engine.runner.attention import AttentionMetadata
from triode.kernels import cpu_decode, cpu_decode_step
from triode.kernels.cpu_decode_step import MAX_PARTS, function_address
from triode.kernels.cpu_quant import PreparedMatmul


class FusedDecode:
    """The C description of one model over one set of KV caches, and the step call."""

    # NOTE: a step's prompt chunks run through the chunk kernel (kernels/cpu/chunk_attention.h,
    # compute-bound like torch's SDPA on the module path, with the fused step's savings on
    # everything else): measured faster than the module path at every shape tried, up to 512
    # rows after 1,500 cached tokens (899,328 positions read, 2.55x; BENCHMARKS.md, issue 13).
    # The bound only keeps an untried extreme (a long prompt chunk deep in a long context) on
    # the module path.
    max_prompt_positions = 1 << 22

    def __init__(self, model: torch.nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]):
        lib = cpu_decode_step.load_library()
        attention = cpu_decode.load_library()
        if lib is None or attention is None:
            raise RuntimeError("the fused decode step needs the CPU kernels (no C compiler?)")
        cfg = model.cfg
        k0 = kv_caches[0][0]
        self._fn = lib.triode_llama_decode
        self._keep: list[torch.Tensor] = []  # tensors whose pointers the C structures hold
        self._linears: list[tuple[cpu_decode_step.Linear, QuantLinear]] = []
        self.model_desc = cpu_decode_step.Model(
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            num_layers=cfg.num_layers,
            block_size=k0.shape[1],
            max_positions=model.rope_cos.shape[0],
            stride_block=k0.stride(0),
            stride_pos=k0.stride(1),
            stride_head=k0.stride(2),
            eps=model.norm.eps,
            scale=model.layers[0].scale,
            rope_cos=self._pointer(model.rope_cos),
            rope_sin=self._pointer(model.rope_sin),
            final_norm=self._pointer(model.norm.weight),
            attention=function_address(cpu_decode.decode_function(attention, k0.dtype)),
            split_heads=1,
            kv_dtype=cpu_decode_step.KV_DTYPES[k0.dtype],
            chunk_kernel=1,
        )
        self.layers = (cpu_decode_step.Layer * cfg.num_layers)()
        for desc, layer, (k_cache, v_cache) in zip(self.layers, model.layers, kv_caches):
            desc.input_norm = self._pointer(layer.input_norm.weight)
            desc.post_norm = self._pointer(layer.post_norm.weight)
            for name in ("qkv", "o", "gate_up", "down"):
                self._describe(getattr(desc, name), getattr(layer, name + "_proj"))
            desc.k_cache = self._cache_pointer(k_cache, k0.dtype)
            desc.v_cache = self._cache_pointer(v_cache, k0.dtype)
        self.refresh_row_limits()
        self.num_calls = 0

    @staticmethod
    def supports(model: torch.nn.Module, backend_name: str) -> bool:
        """Whether this model and attention backend can take the fused step at all."""
        if backend_name != "cpu" or not cpu_decode_step.is_available():
            return False
        if model.cfg.head_dim % 2 or model.cfg.head_dim > 512:
            return False
        for layer in model.layers:
            for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                linear = getattr(layer, name)
                if not isinstance(linear, QuantLinear) or len(linear.parts) > MAX_PARTS:
                    return False
                if not all(isinstance(part, PreparedMatmul) for part, _ in linear.direct_calls):
                    return False  # a float part (a torch matmul)
        return True

    def refresh_row_limits(self) -> None:
        """Read each linear's calibrated row switch-over again (calibration may run later)."""
        limit = None
        for desc, linear in self._linears:
            desc.max_small_rows = linear.max_direct_rows
            if not linear.has_tiles:
                rows = linear.max_direct_rows
                limit = rows if limit is None else min(limit, rows)
        self.max_rows = limit  # None: every row count has a C kernel

    def accepts(self, num_rows: int, attn: AttentionMetadata | None = None) -> bool:
        """Whether this step can run fused: a kernel for its row count, and, for a step with
        prompt chunks (or speculative verification rows), at most `max_prompt_positions`
        context positions read by its multi-token rows in all."""
        if self.max_rows is not None and num_rows > self.max_rows:
            return False
        if attn is None or attn.max_q_len == 1:
            return True
        if attn.max_q_len > num_rows or attn.slot_mapping.numel() != num_rows:
            return False
        q_lens = (attn.cu_seqlens_q[1:] - attn.cu_seqlens_q[:-1]).to(torch.int64)
        lens = attn.seq_lens.to(torch.int64)
        multi = q_lens > 1
        # Row j of a chunk of n tokens ending at context length L reads L - n + 1 + j positions.
        n, ctx = q_lens[multi], lens[multi]
        positions = int((n * ctx - n * (n - 1) // 2).sum())
        return positions <= self.max_prompt_positions

    def step(self, x: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata):
        """Run the step's rows (one per new token) fused. A multi-token sequence (a prompt chunk
        or verification rows) becomes one row per token, each attending to the context up to and
        including itself, over its sequence's block table; its rows go to the C step as one chunk
        (kernels/cpu/chunk_attention.h). The KV writes of all rows of a layer land before its
        attention, so a chunk's later rows see its earlier ones."""
        if attn.max_q_len == 1:
            return self(x, positions, attn.slot_mapping, attn.block_tables, attn.seq_lens)
        cu = attn.cu_seqlens_q.to(torch.int64)
        q_lens = cu[1:] - cu[:-1]
        seq_of_row = torch.repeat_interleave(torch.arange(q_lens.numel()), q_lens)
        offset = torch.arange(x.shape[0]) - cu[:-1][seq_of_row]
        lens = attn.seq_lens.to(torch.int64)[seq_of_row] - q_lens[seq_of_row] + 1 + offset
        tables = attn.block_tables.index_select(0, seq_of_row)
        multi = q_lens > 1
        chunks = torch.stack((cu[:-1][multi], q_lens[multi]), dim=1)
        return self(x, positions, attn.slot_mapping, tables, lens, chunks)

    def __call__(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        chunks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm for the rows' embeddings `x` [M, hidden]
        (float32; overwritten in place and returned). `chunks` [C, 2]: (first row, rows) of
        each multi-token sequence, in row order; every other row is a decode row."""
        x = x.float().contiguous()
        positions = positions.to(torch.int64).contiguous()
        slots = slots.to(torch.int64).contiguous()
        tables = block_tables.to(torch.int32).contiguous()
        lens = seq_lens.to(torch.int32).contiguous()
        pairs = (chunks if chunks is not None else torch.empty(0, 2)).to(torch.int64).contiguous()
        rows = x.shape[0]
        if not (positions.numel() == slots.numel() == lens.numel() == tables.shape[0] == rows):
            raise ValueError("the fused step takes one table row and length per token")
        rc = self._fn(
            ctypes.byref(self.model_desc),
            self.layers,
            x.data_ptr(),
            rows,
            positions.data_ptr(),
            slots.data_ptr(),
            tables.data_ptr(),
            tables.stride(0),
            lens.data_ptr(),
            pairs.data_ptr(),
            pairs.shape[0],
        )
        if rc != 0:
            raise RuntimeError(f"the fused decode step failed (code {rc})")
        self.num_calls += 1
        return x

    # ---- building the description --------------------------------------------------------
    def _pointer(self, tensor: torch.Tensor) -> int:
        if tensor.dtype != torch.float32 or not tensor.is_contiguous():
            raise ValueError("the fused decode step takes contiguous float32 tensors")
        self._keep.append(tensor)
        return tensor.data_ptr()

    def _cache_pointer(self, cache: torch.Tensor, dtype: torch.dtype) -> int:
        if cache.dtype != dtype or not cache.is_contiguous():
            raise ValueError("the fused step takes contiguous KV caches of one dtype")
        self._keep.append(cache)
        return cache.data_ptr()

    def _describe(self, desc: cpu_decode_step.Linear, linear: QuantLinear) -> None:
        calls = linear.direct_calls  # float32 or int8 activations, as calibration chose
        desc.num_parts = len(calls)
        desc.in_features = linear.in_features
        desc.out_features = linear.out_features
        desc.bias = None if linear.bias is None else self._pointer(linear.bias)
        big = {start: part for part, start in linear._tiles}
        for slot, (part, start) in zip(desc.parts, calls):
            args = part.weight_args  # codes, bits, scales, offsets, half, group, N, K
            slot.small = part.fn_address
            tile = big.get(start)
            slot.big = tile.fn_address if tile is not None else None
            slot.codes, slot.bits, slot.scales, slot.offsets = args[0], args[1], args[2], args[3]
            slot.half, slot.group, slot.N, slot.K = args[4], args[5], args[6], args[7]
            slot.column = start
        self._linears.append((desc, linear))
