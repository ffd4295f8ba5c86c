"""The CPU decode kernel over bfloat16 and float16 KV caches: its output against the float64
definition over the same cache values (widened exactly, so only float rounding differs), every
16-bit pattern through the load, and the dtype dispatch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels.batches import PagedBatch, make_batch
from triode.kernels import cpu_decode
from triode.kernels.reference import naive_paged_attention

pytestmark = pytest.mark.skipif(not cpu_decode.is_available(), reason="no C compiler")

DTYPES = [torch.bfloat16, torch.float16]


def decode_batch(
    seq_lens: list[int], dtype: torch.dtype, *, heads: tuple[int, int], head_dim: int,
    block_size: int, seed: int = 0,
) -> PagedBatch:  # fmt: skip
    """One decode token per sequence (q float32) over scattered blocks of a `dtype` cache."""
    b = make_batch(
        [1] * len(seq_lens), seq_lens, num_heads=heads[0], num_kv_heads=heads[1],
        head_dim=head_dim, block_size=block_size, seed=seed,
    )  # fmt: skip
    b.k_cache, b.v_cache = b.k_cache.to(dtype), b.v_cache.to(dtype)
    return b


def assert_matches_definition(b: PagedBatch) -> None:
    got = cpu_decode.paged_attention(*b.args())
    want = naive_paged_attention(*b.args())  # float64 over the same (widened) cache values
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "seq_lens",
    [[1, 17, 41, 5, 301], list(range(3, 123, 6))],  # uneven; many rows (both OpenMP threads)
)
@pytest.mark.parametrize("heads", [(4, 4), (9, 3), (8, 1)])
@pytest.mark.parametrize("block_size,head_dim", [(16, 64), (32, 128), (1, 64)])
def test_16bit_cache_matches_the_definition(dtype, seq_lens, heads, block_size, head_dim):
    b = decode_batch(seq_lens, dtype, heads=heads, head_dim=head_dim, block_size=block_size)
    assert_matches_definition(b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "heads,head_dim",
    [((16, 1), 64), ((6, 2), 24), ((4, 4), 8)],  # group > 8, head_dim not a multiple of 16
)
def test_16bit_cache_outside_the_vector_path(dtype, heads, head_dim):
    b = decode_batch([1, 19, 40, 5], dtype, heads=heads, head_dim=head_dim, block_size=16)
    assert_matches_definition(b)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    num_kv_heads=st.integers(1, 4),
    group=st.integers(1, 10),
    head_dim=st.sampled_from([8, 16, 24, 64, 80, 128]),
    block_size=st.sampled_from([1, 3, 4, 16, 32]),
    seq_lens=st.lists(st.integers(1, 160), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_16bit_cache_matches_the_definition_on_random_shapes(
    dtype, num_kv_heads, group, head_dim, block_size, seq_lens, seed
):
    b = decode_batch(
        seq_lens, dtype, heads=(num_kv_heads * group, num_kv_heads), head_dim=head_dim,
        block_size=block_size, seed=seed,
    )  # fmt: skip
    assert_matches_definition(b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 24])  # the AVX-512 loads, the portable ones
def test_every_16bit_pattern_is_widened_exactly(dtype, head_dim):
    """With a context of one position the softmax is exactly 1, so the output is that position's
    V row as the kernel widened it: all 65,536 bit patterns (subnormals, infinities, NaNs)."""
    num_kv_heads, block_size = 2, 4
    per_row = num_kv_heads * head_dim
    num_rows = -(-(1 << 16) // per_row)
    bits = torch.arange(num_rows * per_row, dtype=torch.int32) % (1 << 16)
    values = bits.to(torch.int16).view(dtype).reshape(num_rows, num_kv_heads, head_dim)
    # Row r is the first position of block r; its other positions hold garbage never read.
    v_cache = torch.full((num_rows, block_size, num_kv_heads, head_dim), 7.0, dtype=dtype)
    v_cache[:, 0] = values
    k_cache = torch.zeros_like(v_cache)
    q = torch.randn(num_rows, 2 * num_kv_heads, head_dim)
    tables = torch.arange(num_rows, dtype=torch.int32)[:, None]
    out = torch.empty_like(q)
    rows = torch.arange(num_rows)
    cpu_decode.paged_decode(
        out, q, k_cache, v_cache, tables, torch.ones(num_rows, dtype=torch.int32),
        rows, rows, head_dim**-0.5,
    )  # fmt: skip
    want = values.float().repeat_interleave(2, dim=1)  # two query heads per KV head
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    assert out.isnan().sum() == want.isnan().sum() > 0 and out.isinf().sum() == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, torch.float8_e4m3fn], ids=str)
def test_unsupported_cache_dtype_is_refused(dtype):
    b = make_batch([1, 1], [5, 9], num_heads=2, num_kv_heads=1, head_dim=16, block_size=4)
    b.k_cache, b.v_cache = b.k_cache.to(dtype), b.v_cache.to(dtype)
    with pytest.raises(ValueError, match="float32, bfloat16, float16 KV caches"):
        cpu_decode.paged_attention(*b.args())


def test_mismatched_cache_dtypes_are_refused():
    b = make_batch([1], [5], num_heads=2, num_kv_heads=1, head_dim=16, block_size=4)
    b.k_cache = b.k_cache.bfloat16()
    with pytest.raises(ValueError, match="differ in dtype"):
        cpu_decode.paged_attention(*b.args())


def test_each_dtype_has_its_own_entry_point():
    lib = cpu_decode.load_library()
    names = {dtype: cpu_decode.decode_function(lib, dtype).__name__ for dtype in DTYPES}
    assert names == {
        torch.bfloat16: "triode_paged_decode_bf16",
        torch.float16: "triode_paged_decode_f16",
    }


def test_the_benchmark_runs_every_dtype(capsys):
    from triode.kernels import cpu_decode_bench

    argv = "--sequences 3 --min-len 5 --max-len 40 --layers 2 --repeats 1 --threads 1"
    threads = torch.get_num_threads()
    try:
        cpu_decode_bench.main(argv.split())
    finally:
        torch.set_num_threads(threads)  # main sets the process's thread count
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["float32", "bfloat16", "float16"]
