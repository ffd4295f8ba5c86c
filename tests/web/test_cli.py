"""The `triode` command line: every config field is a flag explained in words; start-up
failures are one line and exit 1; `generate` streams to stdout."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import time

import pytest

from triode.engine import EngineConfig, GenerateOptions, run_generate
from triode.web.cli import Generate, Serve, main, parse
from triode.web.state import ServerConfig


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse([command, "--help"])
    assert exited.value.code == 0
    # tyro wraps long lines inside boxes: join them back into one string of words.
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_every_config_field_is_a_flag_explained_in_words(capsys, command):
    text = _help(capsys, command)
    classes = [ServerConfig, EngineConfig] if command == "serve" else [GenerateOptions]
    classes += [EngineConfig] if command == "generate" else []
    for cls in classes:
        docs = _field_docs(cls)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in text, flag
            # The field's own docstring is its help (its first words, as tyro may re-wrap).
            doc = docs[f.name]
            assert doc, f"{cls.__name__}.{f.name} has no docstring"
            assert " ".join(doc.split()[:4]) in text, (flag, doc)
    assert "(default: 8000)" in text or command == "generate"
    assert "(default: 128)" in text  # generate --max-tokens / serve --max-num-seqs


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, [*body[1:], None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            docs[node.target.id] = after.value.value if is_doc else ""  # type: ignore[union-attr]
    return docs


def test_flags_map_onto_the_dataclasses():
    command = parse(
        [
            "serve",
            "--port", "9000",
            "--api-key", "k",
            "--allowed-origins", "https://a.example,https://b.example", "https://c.example",
            "--max-ws-connections", "7",
            "--max-num-seqs", "3",
            "--no-enable-prefix-caching",
            "--dtype", "bfloat16",
            "--kv-cache-memory-gib", "0.5",
        ]
    )  # fmt: skip
    assert isinstance(command, Serve)
    server, engine = command.server, command.engine
    assert (server.port, server.api_key, server.max_ws_connections) == (9000, ["k"], 7)
    assert server.allowed_origins == ["https://a.example", "https://b.example", "https://c.example"]
    assert server.host == "127.0.0.1"  # untouched flags keep the defaults
    assert (engine.max_num_seqs, engine.enable_prefix_caching, engine.dtype) == (
        3,
        False,
        "bfloat16",
    )
    assert engine.kv_cache_memory_gib == 0.5 and engine.model is None

    generate = parse(["generate", "Hi", "--max-tokens", "5", "--chat", "--seed", "7"])
    assert isinstance(generate, Generate)
    options = generate.generation
    assert (generate.prompt, options.max_tokens, options.chat) == ("Hi", 5, True)
    assert generate.engine.seed == 7


def test_bad_values_exit_with_usage_errors(capsys):
    for argv in (["serve", "--dtype", "int3"], ["serve", "--max-num-seqs", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "max_num_seqs" in capsys.readouterr().err


def test_generate_streams_text(tiny_folder):
    out, err = io.StringIO(), io.StringIO()
    config = EngineConfig(model=str(tiny_folder), num_kv_blocks=64, seed=1)
    options = GenerateOptions(max_tokens=5, temperature=1.0)
    assert run_generate(config, "Hello", options, out=out, err=err) == 0
    assert out.getvalue().endswith("\n") and len(out.getvalue()) > 1
    assert err.getvalue().startswith("[5 tokens, finish_reason=length")


def test_a_busy_port_is_one_line_and_exit_1_within_2_s():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "triode.web.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines
    assert elapsed < 2.0, f"took {elapsed:.1f} s"


def test_a_missing_model_is_one_line_saying_how_to_get_one(capsys, tmp_path):
    missing = str(tmp_path / "no-such-model")
    assert main(["serve", "--port", "0", "--model", missing]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert missing in err and "hf download" in err and "never downloaded" in err


def test_serve_exits_1_when_the_model_cannot_load(tmp_path):
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
    assert "Traceback" not in done.stderr
