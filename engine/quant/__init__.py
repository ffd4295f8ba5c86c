"""Quantized weights: GGUF files served as they are quantized, and weight-only int8/int4 of
float checkpoints.

- `gguf_blocks`: GGUF block formats (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) unpacked into codes,
  scales and offsets; `gguf_weights`: a file's tensors under transformers' names.
- `onthefly`: int8/int4 quantization of float weights, and the GGUF-to-kernel mapping.
- `linear`: `QuantLinear` (the kernel chosen per call by rows) and `QuantEmbedding` (CPU).
- `calibrate`: the switch-over between the direct kernel and the dense bf16 path, measured.
- `model`: the quantized Llama-family model; `packed_cache`: its packed weights on disk.
- `cuda`: the same methods on CUDA (tinygemm int4, int8, FP8 on Hopper).
- `info`: what is served (method, formats, bytes), for the log and /v1/models.
"""
