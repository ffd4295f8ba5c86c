"""ResponseStore: stored Responses API responses, for `previous_response_id`, GET and DELETE.

In memory, bounded three ways: a number of responses, a number of bytes (each entry's texts:
the response object and the conversation it ends), and an age (`ttl_s` since it was stored).
Past a bound the least recently used entries go first; expired ones go when anything touches
the store (no timer task, no polling). An entry belongs to the API key that made it: another
key finds nothing, as for an id that never existed.

An entry holds the conversation up to and including its output (`history`), so a follow-up
turn needs one lookup, not a walk back through its ancestors.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

# What an entry costs beyond its texts (the dicts, the OrderedDict slot).
ENTRY_OVERHEAD_BYTES = 512


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]  # the Response object as GET returns it
    history: list[dict[str, str]]  # chat messages: earlier turns, this input, this output
    owner: str | None
    stored_at: float
    num_bytes: int = field(default=0)


class ResponseStore:
    def __init__(
        self,
        max_responses: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.num_bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()  # oldest use first
        self._by_age: OrderedDict[str, float] = OrderedDict()  # oldest stored first

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        """The ids held, least recently used first (expired ones dropped first)."""
        self._expire()
        return list(self._entries)

    def put(
        self,
        response_id: str,
        response: dict[str, Any],
        history: list[dict[str, str]],
        owner: str | None,
    ) -> None:
        """Store (or replace) an entry, then drop the least recently used past the bounds. An
        entry bigger than `max_bytes` on its own is not kept."""
        self._drop(response_id)
        size = len(orjson.dumps(response)) + ENTRY_OVERHEAD_BYTES
        size += sum(len(m["content"]) + len(m["role"]) for m in history)
        entry = StoredResponse(response, history, owner, self._clock(), size)
        self._entries[response_id] = entry
        self._by_age[response_id] = entry.stored_at
        self.num_bytes += size
        self._expire()
        while self._entries and (
            len(self._entries) > self.max_responses or self.num_bytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        self._expire()
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return None
        self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str, owner: str | None) -> bool:
        if self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.num_bytes -= entry.num_bytes
            del self._by_age[response_id]

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        while self._by_age:
            response_id, stored_at = next(iter(self._by_age.items()))
            if stored_at >= deadline:
                return
            self._drop(response_id)
