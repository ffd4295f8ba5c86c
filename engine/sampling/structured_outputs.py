"""StructuredOutputsParams: what a request's output must match (vLLM's name and fields).

Plain, picklable data: a JSON schema, "any JSON object", a regular expression, a list of
choices, or a grammar (Lark in llguidance's dialect, or GBNF/EBNF). The engine compiles it
(engine.structured) into a matcher that masks the logits at every step.

    SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "object", ...}))
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

from triode.engine.errors import InvalidRequestError

KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(slots=True)
class StructuredOutputsParams:
    """Exactly one of `json`, `json_object`, `regex`, `choice` or `grammar` is set.

    `strict` concerns JSON schemas only: with it, a schema using a keyword the grammar engine
    cannot enforce (e.g. `uniqueItems`) is refused; without it (the default, as vLLM does) such
    keywords are ignored and everything else is still enforced.
    """

    json: str | dict[str, Any] | None = None  # a JSON schema, as an object or its text
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.json, str):
            try:
                self.json = jsonlib.loads(self.json)
            except ValueError as exc:
                raise _bad(f"structured_outputs.json is not valid JSON: {exc}") from None
        if self.json is not None and not isinstance(self.json, dict):
            raise _bad("structured_outputs.json must be a JSON schema (an object)")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise _bad("structured_outputs.regex must be a non-empty string")
        if self.choice is not None:
            if (
                not isinstance(self.choice, list | tuple)
                or not self.choice
                or not all(isinstance(c, str) and c for c in self.choice)
            ):
                raise _bad("structured_outputs.choice must be a list of non-empty strings")
            self.choice = list(self.choice)
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise _bad("structured_outputs.grammar must be a non-empty string")
        if not isinstance(self.json_object, bool) or not isinstance(self.strict, bool):
            raise _bad("structured_outputs.json_object and .strict must be booleans")
        kinds = self.kinds
        if len(kinds) != 1:
            given = ", ".join(kinds) or "none"
            raise _bad(
                "structured_outputs must set exactly one of json, json_object, regex, choice "
                f"or grammar (got {given})"
            )

    @property
    def kinds(self) -> list[str]:
        """The constraint fields that are set (exactly one on a valid instance)."""
        values = {
            "json": self.json is not None,
            "json_object": self.json_object,
            "regex": self.regex is not None,
            "choice": self.choice is not None,
            "grammar": self.grammar is not None,
        }
        return [k for k in KINDS if values[k]]

    @property
    def kind(self) -> str:
        return self.kinds[0]

    def cache_key(self) -> str:
        """One string per distinct constraint (property order kept: it is the output order)."""
        kind = self.kind
        if kind == "json":
            body = jsonlib.dumps(self.json, separators=(",", ":"), ensure_ascii=False)
        elif kind == "choice":
            body = jsonlib.dumps(self.choice, ensure_ascii=False)
        elif kind == "json_object":
            body = ""
        else:
            body = self.regex if kind == "regex" else self.grammar  # type: ignore[assignment]
        return f"{kind}:{int(self.strict)}:{body}"


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, "structured_outputs")


# vLLM's earlier name for the same thing.
GuidedDecodingParams = StructuredOutputsParams
