"""load_tests talks to servers over sockets: it must not import triode's streaming/ or web/."""

from __future__ import annotations

import ast
from pathlib import Path

LOAD_TESTS = Path(__file__).resolve().parents[2] / "load_tests"
FORBIDDEN = ("triode.streaming", "triode.web")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_load_tests_import_neither_streaming_nor_web():
    offending = {
        f"{path.name}: {name}"
        for path in sorted(LOAD_TESTS.glob("*.py"))
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN)
    }
    assert not offending, sorted(offending)
