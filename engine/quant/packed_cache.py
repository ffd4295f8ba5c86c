"""The packed weights of a quantized model saved next to the converted model folder.

Unpacking and re-laying out a GGUF file's blocks takes seconds; loading the result from one
safetensors file takes a fraction of one. The file is keyed by the packing version (bump
`PACK_VERSION` whenever the layout or the mapping changes) and the quantization method; the
folder itself is already keyed by the source file's path, size and modification time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from triode.kernels.cpu_quant import QuantWeight

logger = logging.getLogger(__name__)

PACK_VERSION = 1

Weights = dict[str, QuantWeight | torch.Tensor]


def cache_path(folder: Path, method: str) -> Path:
    """In a subfolder: a loader globbing the folder's *.safetensors must not see it."""
    return folder / "triode-packed" / f"v{PACK_VERSION}-{method}.safetensors"


def save(path: Path, weights: Weights, extra: dict) -> None:
    """Write atomically (another process may be reading or writing the same file)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, list[int]] = {}
    for name, value in weights.items():
        if isinstance(value, QuantWeight):
            for key, tensor in value.tensors().items():
                tensors[f"{name}::{key}"] = tensor.contiguous()
            meta[name] = value.meta()
        else:
            tensors[name] = value.contiguous()
    header = {"quant": json.dumps(meta), "extra": json.dumps(extra)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("could not cache packed weights at %s: %s", path, exc)
        return
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs the next start some seconds
        logger.warning("could not cache packed weights at %s: %s", path, exc)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load(path: Path) -> tuple[Weights, dict] | None:
    """The weights and the extra information saved with them, or None if not cached."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        meta: dict[str, list[int]] = json.loads(header.get("quant", "{}"))
        raw = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    weights: Weights = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        name, sep, field = key.partition("::")
        if sep:
            parts.setdefault(name, {})[field] = tensor
        else:
            weights[name] = tensor
    for name, fields in parts.items():
        weights[name] = QuantWeight.from_saved(fields, meta[name])
    return weights, json.loads(header.get("extra", "{}"))
