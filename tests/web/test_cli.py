"""The `triode` command line: every config field is a flag; `generate` streams to stdout."""

from __future__ import annotations

import dataclasses
import io

import pytest

from triode.engine.config import EngineConfig
from triode.web.cli import _pick, build_parser, main
from triode.web.offline import run_generate
from triode.web.state import ServerConfig


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_every_config_field_is_a_flag(command):
    options = {o for a in _subparser(command)._actions for o in a.option_strings}
    classes = [EngineConfig, ServerConfig] if command == "serve" else [EngineConfig]
    renames = {"seed": "engine-seed"} if command == "generate" else {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert "--" + renames.get(f.name, f.name.replace("_", "-")) in options, f.name


def test_flags_map_onto_the_dataclasses():
    args = build_parser().parse_args(
        [
            "serve",
            "--port", "9000",
            "--api-key", "k",
            "--allowed-origins", "https://a.example,https://b.example",
            "--allowed-origins", "https://c.example",
            "--max-ws-connections", "7",
            "--max-num-seqs", "3",
            "--no-enable-prefix-caching",
            "--dtype", "bfloat16",
            "--kv-cache-memory-gib", "0.5",
        ]
    )  # fmt: skip
    server = ServerConfig(**_pick(args, ServerConfig))
    engine = EngineConfig(**_pick(args, EngineConfig))
    assert (server.port, server.api_key, server.max_ws_connections) == (9000, "k", 7)
    assert server.allowed_origins == ["https://a.example", "https://b.example", "https://c.example"]
    assert server.host == "127.0.0.1"  # untouched flags keep the defaults
    assert (engine.max_num_seqs, engine.enable_prefix_caching, engine.dtype) == (
        3,
        False,
        "bfloat16",
    )
    assert engine.kv_cache_memory_gib == 0.5 and engine.model is None


def test_bad_values_exit_with_usage_errors(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--dtype", "int3"])
    assert exited.value.code == 2
    assert main(["serve", "--max-num-seqs", "0"]) == 2
    assert "max_num_seqs" in capsys.readouterr().err


def test_generate_streams_text(tiny_folder):
    out, err = io.StringIO(), io.StringIO()
    config = EngineConfig(model=str(tiny_folder), num_kv_blocks=64)
    assert (
        run_generate(config, "Hello", max_tokens=5, seed=1, temperature=1.0, out=out, err=err) == 0
    )
    assert out.getvalue().endswith("\n") and len(out.getvalue()) > 1
    assert err.getvalue().startswith("[5 tokens, finish_reason=length")


def test_serve_exits_1_when_the_model_cannot_load(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(
        '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}'
    )
    done = subprocess.run(
        [sys.executable, "-m", "triode.web.cli", "serve", "--port", "0", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the model failed to load" in done.stderr and "unsupported architecture" in done.stderr
