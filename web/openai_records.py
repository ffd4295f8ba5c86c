"""OpenAIRecords: a chat or completion Generation as records (the RecordSource of OpenAI's
streaming format), for SSE, the WebSocket and resumable streams alike.

The records are the chunks, the usage chunk when `stream_options.include_usage` asks for it,
then END carrying `{"usage": ...}` (what a WebSocket `done` reports); a failure after the
stream began is an ERROR record holding the OpenAI error object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from triode.streaming.records import Record, end_record, error_record, event_record
from triode.web.errors import api_error_from
from triode.web.generation import Generation


class OpenAIRecords:
    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    @property
    def usage(self) -> dict[str, Any]:
        return self.generation.usage

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[Record]:
        generation = self.generation
        try:
            async for chunk in generation:
                yield event_record(chunk)
            if generation.prepared.include_usage:
                yield event_record(generation.usage_chunk())
        except Exception as exc:  # after the headers went out, errors travel in the stream
            yield error_record(api_error_from(exc).to_object())
            return
        yield end_record({"usage": generation.usage})

    def stopped(self, reason: str, message: str) -> list[Record]:
        kind = "invalid_request_error" if reason == "cancelled" else "server_error"
        return [error_record({"message": message, "type": kind, "param": None, "code": reason})]

    async def aclose(self, cancelled: bool = False) -> None:
        """Abort the request if unfinished (the WebSocket's plain generations call this with
        `cancelled`; a plain generation is aborted either way)."""
        await self.generation.aclose()
