"""Linear layers and the embedding over quantized weights (CPU), with the kernel chosen per call.

A step that carries few rows (decode of a few sequences) runs the quantized matmul directly: it
reads each weight once as 4 or 8 bits, with float32 activations, or, where the CPU has
AVX512-VNNI and calibration found it faster, with each row's activations rounded to int8 per
group (integer dot products, as llama.cpp's Q8 activations; `int8_activations`). Either way a
row's result never depends on the other rows of the step. A step with many rows
(prompt chunks, big decode batches) is compute-bound instead and runs in bf16: where the CPU
has AMX, the tile kernel (kernels.cpu_quant_tiles) de-quantizes 64 columns at a time into a
cache-resident panel and multiplies on AMX tiles; elsewhere the weights are de-quantized into a
reusable bf16 scratch matrix and multiplied by a dense bf16 GEMM (oneDNN). Both round the same
numbers to bf16 (weights once, activations once) and sum in float32; the GEMM also rounds its
outputs to bf16, the tiles keep them float32. The switch-over row count
is measured per weight shape at engine start (engine.quant.calibrate), not guessed.

One output may be made of several parts (q/k/v fused, gate/up fused) in different formats, as
GGUF files mix them (e.g. Q4_K q/k and Q6_K v, or a float tensor beside quantized ones): each
part writes its own columns.
"""

from __future__ import annotations

import torch
from torch import nn

from triode.engine.quant.info import WeightSummary, summarise
from triode.kernels import cpu_quant_tiles
from triode.kernels.cpu_quant import (
    PreparedMatmul,
    QuantWeight,
    dequantize_bf16,
    direct_kernel,
    has_int8_kernel,
    rows,
    supports_int8,
)
from triode.kernels.cpu_quant_tiles import PreparedTileMatmul

Part = QuantWeight | torch.Tensor  # a float part is a plain [N, K] matrix

# Most columns de-quantized at once on the dense path (bounds the scratch: 8192 x K bf16).
MAX_SCRATCH_COLUMNS = 8192


class Scratch:
    """One bf16 buffer shared by every quantized linear of a model (they run one at a time)."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.bfloat16)

    def get(self, rows: int, cols: int) -> torch.Tensor:
        if self._buffer.numel() < rows * cols:
            self._buffer = torch.empty(rows * cols, dtype=torch.bfloat16)
        return self._buffer[: rows * cols].view(rows, cols)

    @property
    def nbytes(self) -> int:
        return self._buffer.numel() * 2


class QuantLinear(nn.Module):
    """y = x W^T (+ bias) with W held as quantized parts stacked along the outputs."""

    def __init__(self, parts: list[Part], bias: torch.Tensor | None, scratch: Scratch) -> None:
        super().__init__()
        in_features = {_in_features(p) for p in parts}
        if len(in_features) != 1:
            raise ValueError("all parts of a fused linear must take the same inputs")
        self.parts = parts
        self.in_features = in_features.pop()
        widths = [_out_features(p) for p in parts]
        self.out_features = sum(widths)
        self.starts = [sum(widths[:i]) for i in range(len(parts))]
        self.register_buffer("bias", bias, persistent=False)
        self.scratch = scratch
        # Rows up to which the direct quantized kernel is used (set by calibration).
        self.max_direct_rows = 8
        self._chunks = _column_chunks(parts, self.starts, MAX_SCRATCH_COLUMNS)
        self._direct_float = [
            (PreparedMatmul(p) if isinstance(p, QuantWeight) else p, start)
            for p, start in zip(parts, self.starts)
        ]
        quantized = [p for p in parts if isinstance(p, QuantWeight)]
        # The int8-activation kernel, where this CPU runs it natively (else None).
        self.has_int8 = has_int8_kernel() and all(supports_int8(p) for p in quantized)
        self._direct_int8 = (
            [
                (PreparedMatmul(p, direct_kernel(True)) if isinstance(p, QuantWeight) else p, start)
                for p, start in zip(parts, self.starts)
            ]
            if self.has_int8
            else None
        )
        # Float32 activations until calibration chooses (engine.quant.calibrate).
        self._direct = self._direct_float
        # Big steps on AMX tiles where every quantized part fits them (else the dense GEMM).
        self.has_tiles = cpu_quant_tiles.is_available() and all(
            cpu_quant_tiles.supports(p) for p in quantized
        )
        self._tiles = (
            [
                (PreparedTileMatmul(p) if isinstance(p, QuantWeight) else p, start)
                for p, start in zip(parts, self.starts)
            ]
            if self.has_tiles
            else []
        )

    @property
    def int8_activations(self) -> bool:
        """Whether the direct kernel rounds activations to int8 (see the module docstring)."""
        return self._direct is self._direct_int8

    @int8_activations.setter
    def int8_activations(self, value: bool) -> None:
        if value and self._direct_int8 is None:
            raise ValueError("this CPU or weight has no int8-activation kernel")
        self._direct = self._direct_int8 if value else self._direct_float  # type: ignore[assignment]

    @property
    def direct_calls(self) -> list[tuple[PreparedMatmul | torch.Tensor, int]]:
        """The small-step path per part: (prepared C call, or a float [N, K] matrix; first
        output column). A C caller reads `fn_address` and `weight_args` of each call."""
        return list(self._direct)

    def weight_summaries(self) -> list[WeightSummary]:
        bias = [] if self.bias is None else [self.bias]
        return [summarise(p) for p in [*self.parts, *bias]]

    @property
    def shape_key(self) -> tuple:
        """Linears with equal keys cost the same (one calibration covers them all)."""
        return (self.in_features, tuple(_part_key(p) for p in self.parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.max_direct_rows:
            out = self.forward_direct(x)
        else:
            out = self.forward_bf16(x)
        if self.bias is not None:
            out += self.bias
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def forward_direct(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized kernel chosen for small steps, weights read once per call."""
        return _run_parts(self._direct, x, self.in_features, self.out_features)

    def forward_direct_float(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized kernel on float32 activations."""
        return _run_parts(self._direct_float, x, self.in_features, self.out_features)

    def forward_direct_int8(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized kernel on int8 activations (integer dot products)."""
        if self._direct_int8 is None:
            raise RuntimeError("this CPU or weight has no int8-activation kernel")
        return _run_parts(self._direct_int8, x, self.in_features, self.out_features)

    def forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """The path for big steps: AMX tiles where available, else the dense bf16 GEMM."""
        if self.has_tiles:
            return self.forward_tiles(x)
        return self.forward_dense(x)

    def forward_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """The tile kernel (bf16 products, float32 sums; float parts in float32)."""
        if not self.has_tiles:
            raise RuntimeError("the AMX tile kernel is not available for this linear")
        return _run_parts(self._tiles, x, self.in_features, self.out_features)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """De-quantize (chunk by chunk of columns) into bf16 and run a dense bf16 GEMM."""
        xb = x.to(torch.bfloat16)
        if len(self._chunks) == 1:
            buffer = self.scratch.get(self.in_features, self.out_features)
            _fill(buffer, self._chunks[0][2], 0)
            return torch.mm(xb, buffer).float()
        out = torch.empty(x.shape[0], self.out_features)
        for c0, c1, pieces in self._chunks:
            buffer = self.scratch.get(self.in_features, c1 - c0)
            _fill(buffer, pieces, c0)
            out[:, c0:c1] = torch.mm(xb, buffer)
        return out


def _run_parts(
    parts: list[tuple[PreparedMatmul | PreparedTileMatmul | torch.Tensor, int]],
    x: torch.Tensor,
    in_features: int,
    out_features: int,
) -> torch.Tensor:
    """x @ W^T with each part's kernel writing its own columns (float32 out)."""
    x32 = x if x.dtype == torch.float32 else x.float()
    if x32.stride(1) != 1:
        x32 = x32.contiguous()
    assert x32.dim() == 2 and x32.shape[1] == in_features, x32.shape
    out = torch.empty(x.shape[0], out_features)
    if len(parts) == 1 and not isinstance(parts[0][0], torch.Tensor):
        parts[0][0](x32, out)
        return out
    for part, start in parts:
        if isinstance(part, torch.Tensor):
            out[:, start : start + part.shape[0]] = x32 @ part.t()
        else:
            part(x32, out[:, start : start + part.out_features])
    return out


def _fill(buffer: torch.Tensor, pieces: list[tuple[Part, int, int, int]], c0: int) -> None:
    """Write the pieces' columns of W^T as bf16 into `buffer` (its column 0 = output c0)."""
    for part, p0, p1, col in pieces:
        target = buffer[:, col - c0 : col - c0 + p1 - p0]
        if isinstance(part, QuantWeight):
            dequantize_bf16(part, target, p0, p1)
        else:
            target.copy_(part[p0:p1].t())


def _in_features(part: Part) -> int:
    return part.in_features if isinstance(part, QuantWeight) else part.shape[1]


def _out_features(part: Part) -> int:
    return part.out_features if isinstance(part, QuantWeight) else part.shape[0]


def _part_key(part: Part) -> tuple:
    if isinstance(part, QuantWeight):
        return (part.out_features, part.bits, part.group_size, part.offsets is not None)
    return (part.shape[0], str(part.dtype))


def _column_chunks(
    parts: list[Part], starts: list[int], max_columns: int
) -> list[tuple[int, int, list[tuple[Part, int, int, int]]]]:
    """Split the output columns into chunks of at most `max_columns` (multiples of 64 inside a
    part, since a de-quantization range starts on a 64-column block): (chunk start, chunk end,
    [(part, part column start, part column end, output column)])."""
    chunks: list[tuple[int, int, list[tuple[Part, int, int, int]]]] = []
    current: list[tuple[Part, int, int, int]] = []
    c0 = width = 0
    for part, start in zip(parts, starts):
        p0 = 0
        width_of_part = _out_features(part)
        while p0 < width_of_part:
            room = max_columns - width
            remaining = width_of_part - p0
            take = remaining if remaining <= room else room - room % 64
            if take == 0:
                chunks.append((c0, c0 + width, current))
                current, c0, width = [], start + p0, 0
                continue
            current.append((part, p0, p0 + take, start + p0))
            width += take
            p0 += take
    chunks.append((c0, c0 + width, current))
    return chunks


class QuantEmbedding(nn.Module):
    """Token embedding rows gathered from a quantized matrix (exact float32 values)."""

    def __init__(self, weight: QuantWeight) -> None:
        super().__init__()
        self.weight_q = weight
        self.num_embeddings = weight.out_features
        self.embedding_dim = weight.in_features
        self.out_dtype = torch.float32

    def weight_summaries(self) -> list[WeightSummary]:
        return [summarise(self.weight_q)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return rows(self.weight_q, ids).to(self.out_dtype)
