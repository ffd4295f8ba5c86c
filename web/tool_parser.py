"""ToolCallParser: a model's output text -> content and OpenAI tool calls, incrementally.

Fed the text deltas of one choice as they arrive, it returns what can be sent now: content the
client may show, and tool-call deltas in OpenAI's streaming shape (the first one of a call
carries its id and name, the following ones fragments of its arguments, in order). The whole
answer of a non-streamed request goes through the same parser in one `feed`, so the streamed
pieces always reassemble into exactly the non-streamed calls.

Formats (engine.tool_calls): Hermes-style `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>` blocks anywhere in the text; Llama 3's `{"name": ..., "parameters": {...}}`
objects, separated by ";", making up the whole answer. A call whose JSON starts with its name
streams its arguments as the model writes them (the raw JSON text); any other well-formed
block is sent whole when it closes; a malformed one is given back as content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from triode.engine import ToolCallFormat

# The start of a call's JSON up to where its arguments' value begins.
_HEADER = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
_HEADER_PREFIX_LIMIT = 512  # a header longer than this is not one we can stream


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = ""

    def to_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str
    call: ToolCall | None = None  # set on a call's first delta (id, name)

    def to_object(self) -> dict[str, Any]:
        if self.call is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {
            "index": self.index,
            "id": self.call.id,
            "type": "function",
            "function": {"name": self.call.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class ParsedDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def add_arguments(self, index: int, text: str, call: ToolCall | None = None) -> None:
        last = self.tool_calls[-1] if self.tool_calls else None
        if last is not None and last.index == index and call is None:
            last.arguments += text
        else:
            self.tool_calls.append(ToolCallDelta(index, text, call))


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Incremental parser for one choice's text (see the module docstring)."""

    def __init__(self, fmt: ToolCallFormat, max_calls: int | None = None) -> None:
        self.fmt = fmt
        self.max_calls = max_calls  # 1 when parallel_tool_calls is false
        self.calls: list[ToolCall] = []
        self._content: list[str] = []
        self._buffer = ""  # text not yet given out
        self._state = "text" if fmt.start else "start"
        self._args_scan: _ValueScanner | None = None
        # The markers without their newlines: models are not always exact about those.
        self._start = fmt.start.strip()
        self._end = fmt.end.strip()

    # ---- results --------------------------------------------------------------------------
    @property
    def content(self) -> str | None:
        """The text outside tool calls (None when there were calls and nothing else)."""
        text = "".join(self._content)
        return None if self.calls and not text.strip() else text

    # ---- feeding --------------------------------------------------------------------------
    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        self._buffer += text
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> ParsedDelta:
        """The output ended: give out what was held back."""
        out = ParsedDelta()
        while self._step(out, final=True):
            pass
        if self._buffer:
            if self._state in ("header", "block", "start"):
                self._close_block(out, self._buffer, closed=False)
            elif self._state == "text":
                self._emit(out, self._buffer)
            self._buffer = ""
        return out

    def _emit(self, out: ParsedDelta, text: str) -> None:
        if text:
            out.content += text
            self._content.append(text)

    def _step(self, out: ParsedDelta, final: bool) -> bool:
        """Advance one state transition; False when more text is needed."""
        fmt, buf = self.fmt, self._buffer
        if self._state == "start":  # llama3_json: is the answer (still) calls?
            stripped = buf.lstrip()
            if not stripped:
                return False
            if stripped.startswith("{"):
                self._buffer, self._state = stripped, "header"
                return True
            self._state = "plain"
            return True
        if self._state == "plain":  # llama3_json: the rest is ordinary text
            self._emit(out, buf)
            self._buffer = ""
            return False
        if self._state == "text":  # hermes: text until a start marker
            at = buf.find(self._start)
            if at < 0:
                keep = 0 if final else _partial_suffix(buf, self._start)
                visible = buf[: len(buf) - keep]
                # Whitespace right before a call is the model's formatting, not content.
                held = len(visible) - len(visible.rstrip())
                if final and not self.calls:
                    held = 0
                self._emit(out, visible[: len(visible) - held])
                self._buffer = buf[len(visible) - held :]
                return False
            before = buf[:at]
            if before.strip():
                self._emit(out, before)
            self._buffer, self._state = buf[at + len(self._start) :], "header"
            return True
        if self._state == "header":
            match = _HEADER.match(buf)
            if match is None:
                if len(buf) > _HEADER_PREFIX_LIMIT or not _may_become_header(buf):
                    self._state = "block"
                    return True
                return False
            if match.end() == len(buf) and not final:
                return False  # more whitespace may follow before the arguments start
            if self._full():
                self._state, self._args_scan = "skip", _ValueScanner()
                self._buffer = buf[match.end() :]
                return True
            call = ToolCall(new_call_id(), _unescape(match.group(1)))
            self.calls.append(call)
            out.add_arguments(len(self.calls) - 1, "", call)
            self._buffer, self._state = buf[match.end() :], "arguments"
            self._args_scan = _ValueScanner()
            return True
        if self._state in ("arguments", "skip"):
            scan = self._args_scan
            assert scan is not None
            used = scan.feed(buf)
            piece = buf[:used]
            if self._state == "arguments" and piece:
                self.calls[-1].arguments += piece
                out.add_arguments(len(self.calls) - 1, piece)
            self._buffer = buf[used:]
            if not scan.is_done:
                return False
            self._state = "after"
            return True
        if self._state == "after":  # the rest of the call's JSON and the end marker
            end = self._end or "}"
            at = buf.find(end)
            if at < 0:
                return False
            self._buffer = buf[at + len(end) :]
            self._state = "text" if fmt.start else "between"
            return True
        if self._state == "between":  # llama3_json: "; {next call}" or plain text
            stripped = buf.lstrip()
            if not stripped:
                return False
            sep = fmt.separator.strip()
            if stripped.startswith(sep):
                self._buffer, self._state = stripped[len(sep) :].lstrip(), "start"
                return True
            self._state = "plain"
            self._buffer = stripped
            return True
        if self._state == "block":  # hermes: a block we could not stream; wait for its end
            at = buf.find(self._end) if self._end else -1
            if at < 0:
                return False
            self._close_block(out, buf[:at], closed=True)
            self._buffer, self._state = buf[at + len(self._end) :], "text"
            return True
        raise AssertionError(self._state)

    def _full(self) -> bool:
        return self.max_calls is not None and len(self.calls) >= self.max_calls

    def _close_block(self, out: ParsedDelta, body: str, closed: bool) -> None:
        """A whole call body: a call if it is one, else content (as the model wrote it)."""
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        arguments = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", value.get("parameters"))
        if arguments is not None:
            if not self._full():
                call = ToolCall(new_call_id(), value["name"])  # type: ignore[index]
                call.arguments = json.dumps(arguments, ensure_ascii=False)
                self.calls.append(call)
                out.add_arguments(len(self.calls) - 1, call.arguments, call)
            return
        self._emit(out, f"{self._start}{body}{self._end if closed else ''}")


class _ValueScanner:
    """Finds where one JSON value ends in text that arrives in pieces (strings, escapes and
    nesting tracked); the value's text itself is passed through untouched."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False
        self.is_done = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value (all of them unless it ends)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.is_done = True
                        return i + 1
                continue
            if not self.started:
                if ch.isspace():
                    continue
                self.started = True
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                if self.depth == 0:  # a bare scalar ended at its container's close
                    self.is_done = True
                    return i
                self.depth -= 1
                if self.depth == 0:
                    self.is_done = True
                    return i + 1
            elif ch == "," and self.depth == 0:
                self.is_done = True
                return i
        return len(text)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


_HEADER_START = '{"name":'


def _may_become_header(text: str) -> bool:
    """Could more text still make `text` match _HEADER? (A cheap, whitespace-free check.)"""
    compact = re.sub(r"\s+", "", text)
    if len(compact) <= len(_HEADER_START):
        return _HEADER_START.startswith(compact)
    return compact.startswith(_HEADER_START)


def _unescape(json_string_body: str) -> str:
    try:
        return json.loads(f'"{json_string_body}"')
    except ValueError:
        return json_string_body
