"""Installing triode adds exactly one top-level import name, `triode`, and a user's own modules
named like our folders (`engine.py`, `web.py`) never shadow it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the checkout: setuptools writes build/ beside the sources it builds.
    source = tmp_path_factory.mktemp("source") / "triode"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "artifacts", "__pycache__", "*.egg-info", "node_modules"
        ),
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (path,) = out.glob("triode-*.whl")
    return path


def test_wheel_installs_one_top_level_name(wheel, tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(tmp_path / "site"), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    importable = {
        p.name.removesuffix(".py")
        for p in (tmp_path / "site").iterdir()
        if not p.name.endswith(".dist-info") and p.name != "bin"
    }
    assert importable == {"triode"}
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"triode"}
    # The package data travels: the chat page, the load tester's prompts, the C kernel sources.
    files = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "triode/web/static/index.html",
        "triode/web/static/vendor/marked.umd.js",
        "triode/load_tests/data/chat_prompts.json",
        "triode/kernels/cpu/paged_decode.c",
        "triode/kernels/cpu/quant_matmul.c",
        "triode/kernels/cpu/quant_blocks.h",
        "triode/kernels/cpu/quant_tiles.c",
    ):
        assert data in files
    # Nothing of the test suite is installed.
    assert not any(n.startswith("triode/tests/") for n in files)


def test_installed_wheel_imports_beside_a_users_engine_py(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    user = tmp_path / "project"
    user.mkdir()
    (user / "engine.py").write_text("MINE = True\n")
    (user / "web.py").write_text("MINE = True\n")
    (user / "script.py").write_text(
        "import engine, web\n"
        "from triode import LLM, SamplingParams, AsyncEngine\n"
        "import triode\n"
        "assert engine.MINE and web.MINE\n"
        "print(triode.__file__, LLM.__module__, SamplingParams.__module__, AsyncEngine.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "script.py"],
        cwd=user, capture_output=True, text=True, env={"PYTHONPATH": str(site), "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site / "triode" / "__init__.py"))
    assert "triode.engine.llm" in result.stdout
