"""GGUF block formats unpacked into integer codes plus per-group scales and offsets.

Every format this module reads stores a weight row as blocks along its input dimension; each
value is `scale * code + offset` for its group (offset absent for the symmetric formats). The
unpacked form keeps the file's numbers exactly: `dequantize(unpack(raw))` equals `gguf`'s own
dequantization bit for bit (the float32 operations are the same ones, in the same order), which
the tests check per format.

| format | group | code            | scale (float32)      | offset (float32)   | bits/weight |
|--------|-------|-----------------|----------------------|--------------------|-------------|
| Q4_0   | 32    | q - 8 (int8)    | d                    | -                  | 4.5         |
| Q4_1   | 32    | q (0..15)       | d                    | m                  | 5.0         |
| Q8_0   | 32    | q (int8)        | d                    | -                  | 8.5         |
| Q4_K   | 32    | q (0..15)       | d * sc (6-bit)       | -(dmin * m)        | 4.5         |
| Q5_K   | 32    | q (0..31)       | d * sc (6-bit)       | -(dmin * m)        | 5.5         |
| Q6_K   | 16    | q - 32 (int8)   | d * sc (int8)        | -                  | 6.5625      |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256  # values per k-quant super-block

SUPPORTED = (
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
)


@dataclass(frozen=True, slots=True)
class GroupedCodes:
    """A matrix [rows, cols] as integer codes with one scale (and offset) per group of columns."""

    codes: np.ndarray  # [rows, cols] int8 (signed formats) or uint8
    scales: np.ndarray  # [rows, cols // group_size] float32
    offsets: np.ndarray | None  # same shape as scales, or None (symmetric formats)
    group_size: int
    bits: int  # bits of information per code (4, 5, 6 or 8)
    source: str  # the GGUF type name, e.g. "Q4_1"

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        """float32 values, computed as gguf does (`scale * code`, then `+ offset`)."""
        rows, cols = self.shape
        groups = cols // self.group_size
        codes = self.codes.reshape(rows, groups, self.group_size).astype(np.float32)
        values = self.scales[:, :, None] * codes
        if self.offsets is not None:
            values = values + self.offsets[:, :, None]
        return values.reshape(rows, cols)

    def take_rows(self, index: np.ndarray) -> GroupedCodes:
        """The same matrix with its rows reordered (exact: rows are quantized independently)."""
        offsets = None if self.offsets is None else self.offsets[index]
        return GroupedCodes(
            self.codes[index],
            self.scales[index],
            offsets,
            self.group_size,
            self.bits,
            self.source,
        )


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as float32 [num_blocks, 1]."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [n, c, L] -> codes [n, c, 2, L]: the low nibbles, then the high nibbles."""
    return np.stack((qs & 0x0F, qs >> 4), axis=2)


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block (12 bytes)."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate((a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)), axis=1)
    mins = np.concatenate((b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)), axis=1)
    return scales, mins


def unpack(raw: np.ndarray, qtype: GGMLQuantizationType, rows: int, cols: int) -> GroupedCodes:
    """Unpack a GGUF tensor's bytes (`rows` rows of `cols` values each) into GroupedCodes."""
    if qtype not in SUPPORTED:
        raise NotImplementedError(f"GGUF type {qtype.name} is not supported (have: {_names()})")
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    if cols % block_values:
        raise ValueError(f"{qtype.name}: a row of {cols} values is not whole blocks")
    n = rows * cols // block_values
    if raw.size != n * block_bytes:
        raise ValueError(f"{qtype.name}: {raw.size} bytes do not hold a {rows}x{cols} matrix")
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, block_bytes)
    Q = GGMLQuantizationType
    if qtype == Q.Q4_0:
        d = _f16(blocks, 0)
        codes = _nibbles(blocks[:, None, 2:18]).reshape(n, 32).astype(np.int8) - np.int8(8)
        return _grouped(codes, d, None, rows, cols, 32, 4, qtype)
    if qtype == Q.Q4_1:
        d, m = _f16(blocks, 0), _f16(blocks, 2)
        codes = _nibbles(blocks[:, None, 4:20]).reshape(n, 32)
        return _grouped(codes, d, m, rows, cols, 32, 4, qtype)
    if qtype == Q.Q8_0:
        d = _f16(blocks, 0)
        codes = blocks[:, 2:34].copy().view(np.int8)
        return _grouped(codes, d, None, rows, cols, 32, 8, qtype)
    if qtype in (Q.Q4_K, Q.Q5_K):
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mn = _k_scales_mins(blocks[:, 4:16])
        scales = d * sc.astype(np.float32)  # [n, 8]
        offsets = -(dmin * mn.astype(np.float32))
        if qtype == Q.Q4_K:
            codes = _nibbles(blocks[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
            bits = 4
        else:
            qh = blocks[:, 16:48]  # bit i of byte j: the high bit of value j of sub-block i
            ql = _nibbles(blocks[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
            high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
            codes = ql | (high << 4)
            bits = 5
        return _grouped(codes.reshape(n, QK_K), scales, offsets, rows, cols, 32, bits, qtype)
    if qtype == Q.Q6_K:
        ql = _nibbles(blocks[:, 0:128].reshape(n, 2, 64)).reshape(n, 8, 32)
        qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
        high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3
        codes = (ql | (high.reshape(n, 8, 32) << 4)).astype(np.int8) - np.int8(32)
        sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
        scales = _f16(blocks, 208) * sc  # [n, 16]
        return _grouped(codes.reshape(n, QK_K), scales, None, rows, cols, 16, 6, qtype)
    raise AssertionError(qtype)


def _grouped(
    codes: np.ndarray,
    scales: np.ndarray,
    offsets: np.ndarray | None,
    rows: int,
    cols: int,
    group_size: int,
    bits: int,
    qtype: GGMLQuantizationType,
) -> GroupedCodes:
    groups = cols // group_size
    return GroupedCodes(
        codes=np.ascontiguousarray(codes.reshape(rows, cols)),
        scales=np.ascontiguousarray(scales.reshape(rows, groups), dtype=np.float32),
        offsets=None
        if offsets is None
        else np.ascontiguousarray(offsets.reshape(rows, groups), dtype=np.float32),
        group_size=group_size,
        bits=bits,
        source=qtype.name,
    )


def _names() -> str:
    return ", ".join(t.name for t in SUPPORTED)
