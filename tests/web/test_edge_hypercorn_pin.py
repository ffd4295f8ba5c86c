"""The edge reuses hypercorn internals (web/edge/hypercorn_compat.py): this fails as soon as the
installed hypercorn is not the pinned one or an internal the edge hooks into has changed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from triode.web.edge.hypercorn_compat import HYPERCORN_VERSION, hypercorn_problems

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_pins_the_hypercorn_the_edge_was_written_for():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"hypercorn\b", d)]
    assert pins == [f"hypercorn=={HYPERCORN_VERSION}"]


def test_the_hypercorn_internals_the_edge_hooks_are_unchanged():
    assert hypercorn_problems() == []
