"""Build one of kernels/cpu/*.c with the system C compiler on first use, cache the .so, load it.

The library is compiled for the CPU it runs on (-march=native); the cache key holds the source,
the flags and the CPU's feature flags, so a shared home directory never hands one machine
another machine's build. Without a compiler (or when the build fails) `build` returns None and
the caller keeps its pure-torch path.

The libraries link libgomp by soname; torch has already loaded its own libgomp.so.1, so every
kernel shares one OpenMP runtime and thread pool with torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from triode import host

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "cpu"
BASE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp")


def cpu_signature() -> str:
    """The CPU's feature flags and architecture (part of every build's cache key)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return flags + os.uname().machine


def cache_dir() -> Path:
    return host.cache_dir() / "kernels"


def build(source_name: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Compile kernels/cpu/`source_name` once per CPU and source version; None if impossible.

    Callers cache the result (functools.cache): loading twice would be harmless but slow.
    """
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.info("no C compiler: %s is off, using pure torch", source_name)
        return None
    source = SOURCE_DIR / source_name
    flags = [*BASE_FLAGS, *extra_flags]
    recipe = " ".join(flags) + " | link: " + " ".join(LINK_FLAGS)
    # Headers count too: a source includes them (quant_matmul.c: quant_blocks.h).
    headers = b"".join(h.read_bytes() for h in sorted(SOURCE_DIR.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + recipe.encode() + cpu_signature().encode())
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        obj = tmp[: -len(".so")] + ".o"
        # NOTE: compile and link apart: the source's flags (e.g. -ffast-math) apply to the
        # code only. Linked with -ffast-math, GCC adds crtfastmath.o, whose constructor turns
        # on flush-to-zero for the whole process when the library loads.
        compile_cmd = [
            compiler,
            *(f for f in flags if f != "-shared"),
            "-c",
            str(source),
            "-o",
            obj,
        ]
        link_cmd = [compiler, *LINK_FLAGS, obj, "-o", tmp, "-lm"]
        try:
            for cmd in (compile_cmd, link_cmd):
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            os.replace(tmp, target)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            logger.warning("building %s failed (%s): %s", source_name, exc, detail.decode()[-500:])
            Path(tmp).unlink(missing_ok=True)
            return None
        finally:
            Path(obj).unlink(missing_ok=True)
    return ctypes.CDLL(str(target))
