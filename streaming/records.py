"""Record: one thing a stream sends, already JSON-encoded, whatever the protocol and transport.

Every streaming protocol here (OpenAI chunks, the Vercel AI SDK's UI message parts, the
Responses API's events) is produced as a sequence of records: events, then exactly one terminal
record, END (a normal end; its payload is what a WebSocket `done` carries, e.g. usage) or ERROR
(an OpenAI error object). Payloads are encoded once, where they are made; SSE and each
WebSocket envelope splice the bytes into their framing, so replaying a record to a second
reader or a resumed client costs no JSON encoding.

A `RecordSource` is what produces one generation's records; `stopped` gives the records that end
it when it is stopped early (cancelled, expired, evicted), in the protocol's own terms.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


class RecordKind(enum.Enum):
    EVENT = "event"
    END = "end"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    payload: bytes  # JSON
    event: str | None = None  # the SSE `event:` name, for protocols that name events
    seq: int | None = None  # the position in a resumable stream; None on a plain one

    @property
    def is_terminal(self) -> bool:
        return self.kind is not RecordKind.EVENT

    def at(self, seq: int) -> Record:
        """This record numbered `seq`."""
        return Record(self.kind, self.payload, self.event, seq)


def event_record(payload: Any, event: str | None = None) -> Record:
    return Record(RecordKind.EVENT, orjson.dumps(payload), event)


def end_record(payload: Any = None) -> Record:
    return Record(RecordKind.END, orjson.dumps(payload))


def error_record(error: dict[str, Any]) -> Record:
    """`error` is an OpenAI error object: {"message", "type", "param", "code"}."""
    return Record(RecordKind.ERROR, orjson.dumps(error))


class RecordSource(Protocol):
    """One generation's records, ending with a terminal record."""

    def __aiter__(self) -> AsyncIterator[Record]: ...

    def stopped(self, reason: str, message: str) -> list[Record]:
        """The records that end this generation when it is stopped early (`reason`: cancelled,
        expired, evicted, overflow), ending with a terminal record."""
        ...

    async def aclose(self) -> None:
        """Abort the generation if it has not finished; idempotent, safe while cancelled."""
        ...
