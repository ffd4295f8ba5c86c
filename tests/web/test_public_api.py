"""web/ talks to the engine through its public API only: the names `triode.engine` exports
(the AsyncEngine actor, its EngineState, ModelInfo, InputProcessor, the request types and the
typed errors), never a module or attribute behind them."""

from __future__ import annotations

import ast
from pathlib import Path

import triode.engine

WEB = Path(__file__).resolve().parents[2] / "web"


def _web_sources() -> list[tuple[Path, ast.Module]]:
    files = sorted(WEB.glob("*.py"))
    assert len(files) > 10  # the check reads the real package
    return [(f, ast.parse(f.read_text(), str(f))) for f in files]


def test_web_imports_only_the_engines_public_names():
    public = set(triode.engine.__all__)
    problems = []
    for path, tree in _web_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
                problems += [f"{path.name}: import {m}" for m in modules if _is_engine(m)]
            elif isinstance(node, ast.ImportFrom) and _is_engine(node.module or ""):
                if node.module != "triode.engine":
                    problems.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
                else:
                    hidden = [a.name for a in node.names if a.name not in public]
                    problems += [f"{path.name}:{node.lineno}: {name}" for name in hidden]
    assert not problems, "web/ reaches behind the engine's public API:\n" + "\n".join(problems)


def test_web_never_reaches_through_the_actor():
    problems = []
    for path, tree in _web_sources():
        text = path.read_text()
        if ".engine.engine" in text or "._core" in text:
            problems.append(f"{path.name}: reaches the engine core behind the actor")
        for node in ast.walk(tree):
            # `<anything>.engine._private`: the actor's internals
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "engine"
            ):
                problems.append(f"{path.name}:{node.lineno}: .engine.{node.attr}")
    assert not problems, "\n".join(problems)


def test_the_public_names_exist():
    for name in triode.engine.__all__:
        assert getattr(triode.engine, name) is not None, name


def _is_engine(module: str) -> bool:
    return module == "triode.engine" or module.startswith("triode.engine.")
