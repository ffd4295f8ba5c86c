"""Shared fixtures: the bundled model's converted folder and a tiny random-weight Llama."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests: `ci` (the default) is fixed and deterministic, sized for CI's 2 cores; run
# `pytest --hypothesis-profile=thorough` locally for many more (random) examples. A test that
# needs a different size sets its own @settings.
settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("ci")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def bundled_folder() -> Path:
    """The bundled SmolLM2 as a plain Hugging Face folder (converted once, then cached)."""
    from triode.engine.models.loader import resolve_model

    return resolve_model(None).folder


@pytest.fixture(scope="session")
def tokenizer(bundled_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_folder))


def make_tiny_llama(
    folder: Path,
    bundled_folder: Path,
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    num_layers: int = 2,
    tie: bool = True,
    model_type: str = "llama",
    seed: int = 0,
    vocab_size: int = 49152,
) -> Path:
    """Save a random-weight Llama-family model with the bundled tokenizer (real vocabulary)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=num_heads * head_dim,
        intermediate_size=96,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger-than-init weights make the logits spread out, so greedy ties are rare.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (bundled_folder / name).exists():
            shutil.copy(bundled_folder / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, bundled_folder) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), bundled_folder)
