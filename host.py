"""Facts about the machine the process runs on, shared by every part of triode.

A leaf module (standard library only) that engine/, kernels/, web/ and load_tests/ may all
import without breaking the dependency rules of DESIGN.md.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def cache_dir(override: str | None = None) -> Path:
    """triode's cache folder (converted GGUF models, compiled kernels): `override` if given,
    else $XDG_CACHE_HOME/triode, else ~/.cache/triode."""
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "triode"


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE toward `wanted` (capped by the hard limit); returns the
    soft limit now in force.

    Every socket is a file descriptor: a common default soft limit of 1024 refuses
    connections near a thousand clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
