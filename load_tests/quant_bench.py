"""Quantized weights against float32 and llama.cpp, in one command (issue 14's benchmark).

    python -m triode.load_tests.quant_bench                    # everything
    python -m triode.load_tests.quant_bench --workload single --no-llama-cpp

- single: one stream, 100-token prompt, 128 new tokens (as load_tests.offline), for each
  weights configuration; also decode-only tokens/s and the GB/s of weights read per second
  (weight bytes x decode tokens/s: every decode step reads every weight once).
- llama.cpp on the same GGUF file, same prompt, greedy, same threads: llama-cpp-python built
  from its source package into a venv outside the repository (cached under
  ~/.cache/triode-bench; the first build takes minutes). Never used by the tests.
- fixed16: 64 requests x 128 new tokens at 16 concurrent (max_num_seqs 16); mixed: 128
  requests at once, prompts 16-512, outputs 16-256 (load_tests.offline's workloads).
- rss: `triode serve` started per configuration; the resident memory of its process tree (the
  server and its engine-core child) once /health answers.
- kernels: the quantized linears of the bundled GGUF model (every layer's, as a forward pass
  streams them) per kernel and row count: the direct float32 kernel, the AMX tiles and the
  de-quantize + dense GEMM path, interleaved in one process (ms per step; ratios to tiles).

Every configuration runs in this one process, one after the other, so the ratios are same-run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS: dict[str, dict] = {
    "float32": {"quantization": "none", "dtype": "float32"},
    "gguf": {"quantization": "gguf"},
    # The direct kernel on integer dot products (int8 activation digits) wherever this CPU has
    # it, whatever calibration chose (engine.quant.calibrate.CHOOSE_INT8): --workload single.
    "gguf-int8-acts": {"quantization": "gguf", "int8_activations": True},
    "gguf-float-acts": {"quantization": "gguf", "int8_activations": False},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    "bf16": {"quantization": "none", "dtype": "bfloat16"},
}
LLAMA_CPP_VERSION = "0.3.36"
BENCH_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "triode-bench"


@dataclass
class Row:
    workload: str
    system: str
    tokens_per_s: float
    detail: dict = field(default_factory=dict)


def single_stream(config: dict, threads: int, seed: int = 0) -> Row:
    """100-token prompt, 128 greedy tokens; wall-clock with prefill, and decode alone."""
    from triode.engine import LLM, SamplingParams

    options = dict(config)
    int8_activations = options.pop("int8_activations", None)
    llm = LLM(**options, num_threads=threads, enable_prefix_caching=False, kv_cache_memory_gib=0.25)
    engine = llm.engine
    if int8_activations is not None:
        from triode.engine.quant.linear import QuantLinear

        for module in engine.runner.model.modules():
            if isinstance(module, QuantLinear) and module.has_int8:
                module.int8_activations = int8_activations
    rng = random.Random(seed)
    prompt = [rng.randrange(300, 49000) for _ in range(100)]
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompt[:32]}], SamplingParams(max_tokens=4), use_tqdm=False)
    engine.add_request("bench", prompt, params)
    start = time.perf_counter()
    first = None
    produced = 0
    while engine.has_unfinished_requests():
        for delta in engine.step():
            produced += len(delta.token_ids)
            if first is None and produced:
                first = time.perf_counter()
    end = time.perf_counter()
    assert produced == 128 and first is not None, produced
    info = engine.runner.weights_info
    decode_tps = 127 / (end - first)
    return Row(
        "single",
        _name(config),
        128 / (end - start),
        {
            "decode_tokens_per_s": round(decode_tps, 2),
            "prefill_ms": round(1e3 * (first - start), 1),
            "weight_bytes": info.weight_bytes,
            "weights_gb_per_s": round(info.weight_bytes * decode_tps / 1e9, 2),
            "weights": info.summary(),
        },
    )


def batched(name: str, config: dict, threads: int, seed: int = 0) -> Row:
    from triode.load_tests.offline import make_workload, run_triode

    options = dict(config, num_threads=threads)
    if name == "fixed16":
        workload = make_workload("fixed", seed)
        workload.name = "fixed16"
        options["max_num_seqs"] = 16
    else:
        workload = make_workload(name, seed)
    result = run_triode(workload, options)
    return Row(workload.name, _name(config), result.tokens_per_s, result.detail)


_LLAMA_SCRIPT = """
import json, random, sys, time
from llama_cpp import Llama
path, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
            n_batch=512, verbose=False)
rng = random.Random(seed)
prompt = [rng.randrange(300, 49000) for _ in range(100)]
llm.eval(prompt[:32]); llm.reset()  # warm-up
start = time.perf_counter()
llm.eval(prompt)
token = llm.sample(temp=0.0)
first = time.perf_counter()
for _ in range(127):
    llm.eval([token])
    token = llm.sample(temp=0.0)
end = time.perf_counter()
print(json.dumps({"total": 128 / (end - start), "decode": 127 / (end - first),
                  "prefill_ms": 1e3 * (first - start)}))
"""


# NOTE: llama.cpp's AMX kernels (compiled in by -march=native where the CPU has AMX) crash in
# the first multi-token eval on this machine (Xeon with AMX, llama-cpp-python 0.3.36), so the
# build names its instruction sets itself: every x86 extension the CPU reports, AMX never.
_GGML_X86 = {  # cmake option: /proc/cpuinfo flag
    "GGML_SSE42": "sse4_2",
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_BMI2": "bmi2",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512bw",  # with F, CD, VL, DQ
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}


def llama_cpp_cmake_args() -> list[str]:
    """CMake options for this CPU: its own x86 extensions, AMX off (see the NOTE above)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.startswith("flags")), "")
    except OSError:
        line = ""
    flags = set(line.split(":", 1)[-1].split())
    if "avx2" not in flags:  # not an x86 CPU we can describe: let llama.cpp detect it
        return ["-DGGML_NATIVE=ON"]
    args = [
        "-DGGML_NATIVE=OFF",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
    ]
    args += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for opt, flag in _GGML_X86.items()]
    return args


def llama_cpp_python() -> Path:
    """The venv's interpreter with llama-cpp-python built from source (built once, cached; the
    venv's name holds the version and the build options, so a changed build is a new venv)."""
    cmake_args = llama_cpp_cmake_args()
    key = hashlib.sha256(" ".join([LLAMA_CPP_VERSION, *cmake_args]).encode()).hexdigest()[:12]
    venv = BENCH_DIR / f"llama-cpp-{LLAMA_CPP_VERSION}-{key}"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"building llama-cpp-python {LLAMA_CPP_VERSION} from source into {venv} (minutes)")
    print(f"  CMAKE_ARGS={' '.join(cmake_args)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    env = {
        **os.environ,
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        "CMAKE_ARGS": " ".join(cmake_args),
    }
    # --no-cache-dir: pip would otherwise reuse a wheel built earlier with other options.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-binary",
         "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
        check=True,
        env=env,
    )  # fmt: skip
    return python


def llama_cpp_single(gguf: Path, threads: int, seed: int = 0) -> Row:
    python = llama_cpp_python()
    out = subprocess.run(
        [str(python), "-c", _LLAMA_SCRIPT, str(gguf), str(threads), str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    file_bytes = gguf.stat().st_size
    return Row(
        "single",
        "llama.cpp",
        numbers["total"],
        {
            "decode_tokens_per_s": round(numbers["decode"], 2),
            "prefill_ms": round(numbers["prefill_ms"], 1),
            "weight_bytes": file_bytes,
            "weights_gb_per_s": round(file_bytes * numbers["decode"] / 1e9, 2),
        },
    )


KERNEL_ROWS = (1, 4, 8, 16, 32, 64, 128, 256, 512)


def kernel_rows(threads: int, row_counts: tuple[int, ...], rounds: int = 3) -> list[Row]:
    """ms per step of all quantized linears (lm head aside) for each kernel and row count."""
    import torch

    from triode.engine import LLM
    from triode.engine.quant.linear import QuantLinear

    llm = LLM(quantization="gguf", num_threads=threads, kv_cache_memory_gib=0.1)
    model = llm.engine.runner.model
    linears = [m for m in model.layers.modules() if isinstance(m, QuantLinear)]
    kernels = {"direct": "forward_direct", "dense": "forward_dense"}
    if linears[0].has_tiles:
        kernels["tiles"] = "forward_tiles"
    rows_out = []
    with torch.inference_mode():
        for rows in row_counts:
            inputs = {k: torch.randn(rows, k) for k in {m.in_features for m in linears}}
            best = dict.fromkeys(kernels, float("inf"))
            for _ in range(rounds):  # interleaved: a burst of load hits every kernel alike
                for name, method in kernels.items():
                    calls = [(getattr(m, method), inputs[m.in_features]) for m in linears]
                    calls[0][0](calls[0][1])  # warm
                    start = time.perf_counter()
                    for fn, x in calls:
                        fn(x)
                    best[name] = min(best[name], time.perf_counter() - start)
            detail = {f"{k}_ms": round(1e3 * v, 2) for k, v in best.items()}
            if "tiles" in best:
                for name in ("direct", "dense"):
                    detail[f"{name}_over_tiles"] = round(best[name] / best["tiles"], 2)
            rows_out.append(Row("kernels", f"rows={rows}", 0.0, detail))
    del llm
    return rows_out


def server_rss(config: dict, threads: int) -> Row:
    """`triode serve` with this configuration: resident set size once /health says ready."""
    import httpx

    from triode.load_tests.servers import free_port

    port = free_port()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
    argv = [sys.executable, "-m", "triode.web.cli", "serve", "--port", str(port),
            "--num-threads", str(threads), *flags]  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"triode serve {flags} did not become healthy")
        # The engine core runs in a child process by default: count the whole process tree.
        rss_kb = sum(_rss_kb(pid) for pid in _process_tree(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=60)
    return Row("rss", _name(config), 0.0, {"rss_mb": round(rss_kb / 1024, 1)})


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS")), None)
    return int(line.split()[1]) if line else 0


def _name(config: dict) -> str:
    for name, options in CONFIGS.items():
        if options == config:
            return name
    return ",".join(f"{k}={v}" for k, v in config.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="single,fixed16,mixed,rss")
    parser.add_argument("--configs", default="float32,gguf", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument(
        "--kernel-rows", default=",".join(map(str, KERNEL_ROWS)), help="for --workload kernels"
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)

    import torch

    from triode.engine.models.loader import bundled_gguf_path

    workloads = args.workload.split(",")
    configs = [CONFIGS[c] for c in args.configs.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads")
    rows: list[Row] = []
    for workload in workloads:
        base: Row | None = None
        if workload == "kernels":
            counts = tuple(int(r) for r in args.kernel_rows.split(","))
            for row in kernel_rows(args.threads, counts):
                rows.append(row)
                _print(row, None)
            continue
        for config in configs:
            if workload == "single":
                row = single_stream(config, args.threads)
            elif workload == "rss":
                row = server_rss(config, args.threads)
            elif "int8_activations" in config:
                raise SystemExit("the gguf-int8-acts configuration is for --workload single")
            else:
                row = batched(workload, config, args.threads)
            rows.append(row)
            base = base or row
            _print(row, base)
        if workload == "single" and not args.no_llama_cpp:
            theirs = llama_cpp_single(bundled_gguf_path(), args.threads)
            rows.append(theirs)
            _print(theirs, base)
            for row in rows:
                if row.workload == "single" and row is not theirs:
                    row.detail["vs_llama_cpp"] = round(row.tokens_per_s / theirs.tokens_per_s, 3)
                    print(f"  {row.system} / llama.cpp = {row.detail['vs_llama_cpp']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def _print(row: Row, base: Row | None) -> None:
    if row.workload == "kernels":
        print(f"kernels {row.system:10s} " + ", ".join(f"{k} {v}" for k, v in row.detail.items()))
        sys.stdout.flush()
        return
    if row.workload == "rss":
        print(f"rss     {row.system:10s} {row.detail['rss_mb']:8.1f} MB resident after start")
        return
    ratio = f" ({row.tokens_per_s / base.tokens_per_s:.2f}x {base.system})" if base else ""
    print(f"{row.workload:7s} {row.system:10s} {row.tokens_per_s:8.1f} tok/s{ratio}")
    d = row.detail
    if "decode_tokens_per_s" in d:
        print(
            f"        decode {d['decode_tokens_per_s']:.1f} tok/s, prefill {d['prefill_ms']} ms, "
            f"{d['weight_bytes'] / 1e6:.1f} MB of weights -> {d['weights_gb_per_s']} GB/s"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
