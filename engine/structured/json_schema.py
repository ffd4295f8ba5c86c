"""JSON schemas and regexes as the grammar engine should read them.

- A schema is checked against its meta-schema (jsonschema) first, so a broken one gets a
  message that says where it is broken.
- An object schema that lists `properties` but says nothing about others gets
  `additionalProperties: false` (vLLM's default grammar backend, xgrammar, does the same):
  otherwise a small model tends to invent keys until it runs out of tokens. An explicit
  `additionalProperties` (or `patternProperties`/`unevaluatedProperties`) is kept as given.
  Subschemas of `allOf` are left alone: closing each of them would forbid the others' keys.
- `\\d` means an ASCII digit, as in JSON Schema's ECMA-262 patterns and as users expect;
  llguidance's Rust regexes would otherwise allow every Unicode digit (e.g. U+1FBF8).
"""

from __future__ import annotations

from typing import Any

from triode.engine.errors import InvalidRequestError

# Keywords that make closing an object wrong: it is already open or closed on purpose, or
# other subschemas (composition, references, conditionals) may add properties of their own.
_KEEP_OPEN = (
    "additionalProperties",
    "patternProperties",
    "unevaluatedProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "$ref",
    "if",
    "dependentSchemas",
)


def check_json_schema(schema: Any, param: str) -> None:
    """Raise InvalidRequestError unless `schema` is a valid JSON Schema."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param}: a JSON schema must be an object", param)
    # NOTE: no format checks: they would judge `pattern`s by Python's `re`, which lacks
    # ECMA-262's \p{L} and friends; the grammar engine compiles (and refuses) patterns itself.
    cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidRequestError(
            f"{param}: invalid JSON schema at {where}: {error.message}", param
        ) from None


def prepare_schema(schema: Any, close_objects: bool = True) -> Any:
    """A copy of `schema` with closed objects and ASCII `\\d` in patterns (see above)."""
    return _walk(schema, close_objects, in_all_of=False)


def _walk(node: Any, close_objects: bool, in_all_of: bool) -> Any:
    if isinstance(node, list):
        return [_walk(item, close_objects, in_all_of) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("const", "enum", "default", "examples"):
            out[key] = value  # data, not schemas
        elif key == "pattern" and isinstance(value, str):
            out[key] = ascii_regex(value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _walk(sub, close_objects, False) for name, sub in value.items()}
        else:
            out[key] = _walk(value, close_objects, key == "allOf")
    if (
        close_objects
        and not in_all_of
        and isinstance(out.get("properties"), dict)
        and not any(k in out for k in _KEEP_OPEN)
    ):
        out["additionalProperties"] = False
    return out


def ascii_regex(regex: str) -> str:
    """`regex` with `\\d` as [0-9] and `\\D` as [^0-9] (inside a class, `\\d` becomes 0-9)."""
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(regex):
        ch = regex[i]
        if ch == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            if nxt == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif nxt == "D" and not in_class:
                out.append("[^0-9]")
            else:
                out.append(regex[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            # A leading "]" (or "^]") is a literal inside the class.
            j = i + 1
            if j < len(regex) and regex[j] == "^":
                out.append("^")
                j += 1
            if j < len(regex) and regex[j] == "]":
                out.append("]")
                j += 1
            i = j
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)
