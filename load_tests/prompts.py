"""The two prompt sets: synthetic text of a given token length, and bundled real chat prompts.

Synthetic prompts are seeded random English words cut to exactly `num_tokens` tokens of the
bundled SmolLM2 tokenizer (its tokenizer.json, through the `tokenizers` library, without special
tokens) and decoded back to text; re-encoding that text gives the same count in practice (the
tests check it). On the chat route the server's chat template adds its own tokens on top.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

_WORDS = """
the of and to in is was for on that with as by at from it his an were are which this be or
had not but have one their first new more also after who two they has her all other been its
time during only would into over some there about most many years may then can between such
than these world city people back work known while being small early since under three life
later water house music river light story garden window morning market evening mountain sea
paper table letter village winter summer station bridge forest island school teacher student
doctor kitchen bread coffee tea apple orange green blue red yellow quiet bright slow quick
happy careful strange simple ancient modern gentle heavy warm cold open close read write walk
run think speak carry build follow remember answer travel dream listen watch learn teach grow
""".split()  # noqa: SIM905  (a word list reads better as text)

CHAT_PROMPTS_FILE = "chat_prompts.json"


def bundled_tokenizer_path() -> Path:
    """tokenizer.json of the bundled SmolLM2 (its converted folder; converted on first use)."""
    # Imported here: the engine package pulls in torch, which only this path needs.
    from triode.engine.models.loader import resolve_model

    return resolve_model(None).folder / "tokenizer.json"


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """A tokenizer.json file, a folder holding one, or (None) the bundled model's."""
    target = Path(path) if path is not None else bundled_tokenizer_path()
    if target.is_dir():
        target = target / "tokenizer.json"
    return Tokenizer.from_file(str(target))


def synthetic_prompt(tokenizer: Tokenizer, num_tokens: int, rng: random.Random) -> str:
    """Random words cut to `num_tokens` tokens (at least one)."""
    if num_tokens < 1:
        raise ValueError("a synthetic prompt needs at least one token")
    # ~1.3 tokens per word here; draw enough words that cutting always trims.
    words = [rng.choice(_WORDS) for _ in range(num_tokens + 8)]
    ids = tokenizer.encode(" ".join(words), add_special_tokens=False).ids[:num_tokens]
    return tokenizer.decode(ids)


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@cache
def chat_prompts() -> tuple[tuple[dict[str, str], ...], ...]:
    """The bundled real chat conversations (each a tuple of OpenAI messages)."""
    raw = resources.files("triode.load_tests").joinpath("data", CHAT_PROMPTS_FILE).read_text()
    items: list[dict[str, Any]] = json.loads(raw)
    return tuple(tuple(dict(m) for m in item["messages"]) for item in items)


def last_user_text(messages: tuple[dict[str, str], ...]) -> str:
    """What a chat prompt becomes on the plain completions route: the last user message."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")
