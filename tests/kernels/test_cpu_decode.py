"""The compiled CPU decode kernel (backend "cpu") against the float64 definition, and the whole
engine on it against the pure-torch backend."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.batches import make_batch
from triode.engine import LLM, SamplingParams
from triode.kernels import cpu_decode, paged_attention
from triode.kernels.reference import naive_paged_attention

pytestmark = pytest.mark.skipif(not cpu_decode.is_available(), reason="no C compiler")

CASES = [
    ([1, 1, 1, 1, 1], [1, 17, 40, 5, 300]),  # decode only, uneven, one long context
    ([5, 1, 12, 1], [21, 33, 12, 2]),  # prompt chunks over cached context mixed with decode
    ([1] * 40, list(range(3, 123, 3))),  # many sequences: both OpenMP threads busy
]


@pytest.mark.parametrize("q_lens,seq_lens", CASES)
@pytest.mark.parametrize("heads", [(4, 4), (9, 3), (8, 2), (8, 1)])
@pytest.mark.parametrize("block_size,head_dim", [(16, 64), (32, 128), (4, 16)])
def test_cpu_backend_matches_the_definition(q_lens, seq_lens, heads, block_size, head_dim):
    b = make_batch(
        q_lens, seq_lens, num_heads=heads[0], num_kv_heads=heads[1],
        head_dim=head_dim, block_size=block_size,
    )  # fmt: skip
    got = paged_attention(*b.args(), backend="cpu")
    want = naive_paged_attention(*b.args())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    "heads,head_dim",
    [((16, 1), 64), ((6, 2), 24), ((4, 4), 8)],  # group > 8, head_dim not a multiple of 16
)
def test_shapes_outside_the_vector_path_use_the_generic_loops(heads, head_dim):
    b = make_batch(
        [1, 3, 1], [17, 40, 5], num_heads=heads[0], num_kv_heads=heads[1],
        head_dim=head_dim, block_size=16,
    )  # fmt: skip
    got = paged_attention(*b.args(), backend="cpu")
    torch.testing.assert_close(got, naive_paged_attention(*b.args()), rtol=1e-4, atol=2e-5)


def test_strided_q_and_out_rows_are_respected():
    b = make_batch([1, 1, 1], [9, 20, 31], num_heads=6, num_kv_heads=2, head_dim=16, block_size=4)
    wide = torch.randn(3, 8, 16)
    wide[:, 1:7] = b.q
    q = wide[:, 1:7]  # rows of q are not contiguous: stride(0) = 8 * 16
    out = torch.full((3, 6, 16), float("nan"))
    tokens = torch.arange(3)
    cpu_decode.paged_decode(
        out, q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, tokens, tokens, b.scale
    )
    torch.testing.assert_close(out, naive_paged_attention(*b.args()), rtol=1e-4, atol=2e-5)


def test_wrong_dtype_is_refused():
    b = make_batch([1], [5], num_heads=2, num_kv_heads=2, head_dim=16, block_size=4)
    tokens = torch.arange(1)
    with pytest.raises(TypeError, match="float32"):
        cpu_decode.paged_decode(
            b.q.half(), b.q.half(), b.k_cache, b.v_cache, b.block_tables, b.seq_lens,
            tokens, tokens, 1.0,
        )  # fmt: skip


def test_engine_tokens_match_the_torch_backend(tiny_folder):
    prompts = [
        {"prompt_token_ids": list(range(100 + 30 * i, 100 + 30 * i + 5 + 7 * i))} for i in range(5)
    ]
    params = SamplingParams(temperature=0, max_tokens=10)
    runs = {}
    for backend in ("torch", "cpu"):
        llm = LLM(model=str(tiny_folder), attention_backend=backend, num_kv_blocks=64,
                  max_num_batched_tokens=16)  # fmt: skip
        assert llm.engine.runner.attention.name == backend
        runs[backend] = [
            o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)
        ]
    assert runs["cpu"] == runs["torch"]


def test_onednn_linear_matches_torch():
    from triode.engine.models.linear import linear, onednn_available

    if not onednn_available():
        pytest.skip("no oneDNN in this torch build")
    x = torch.randn(37, 96, dtype=torch.float64).float()
    w = torch.randn(200, 96)
    bias = torch.randn(200)
    want = torch.nn.functional.linear(x.double(), w.double(), bias.double())
    got = linear(x, w, bias, onednn=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    strided = torch.randn(96, 37).t()  # a non-contiguous input
    torch.testing.assert_close(
        linear(strided, w, None, True), linear(strided, w, None, False), rtol=1e-5, atol=1e-4
    )


def test_loading_the_kernels_leaves_subnormal_floats_alone():
    """A library built with -ffast-math carries crtfastmath.o, which switches on flush-to-zero
    for the whole process when it loads: every float in torch and Python would change."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "tiny = lambda: 1e-310 * 1.0 != 0.0\n"  # a subnormal double survives a multiply
        "assert tiny(), 'subnormals already flushed before loading'\n"
        "from triode.kernels import cpu_decode, cpu_quant\n"
        "assert cpu_decode.load_library() is not None\n"
        "cpu_quant.load_library()\n"
        "sys.exit(0 if tiny() else 3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-2000:])
