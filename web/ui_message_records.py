"""UIMessageRecords: a chat Generation as the Vercel AI SDK's UI message stream (v1).

The parts: `start` (its `messageId` is the completion id, which is also the resumable
stream's id), `text-start`, one `text-delta` per chunk with text, `text-end`, then `finish`
with the finish reason (`stop` / `length`); a failure after the stream began is an `error`
part, a generation stopped by the client an `abort` part. The terminal record (END) is what
SSE turns into `data: [DONE]` and the WebSocket transport into its `end` frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from triode.streaming.records import Record, end_record, event_record
from triode.web.errors import api_error_from
from triode.web.generation import Generation

TEXT_PART_ID = "text-0"
_FINISH_REASONS = {"stop": "stop", "length": "length"}


class UIMessageRecords:
    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[Record]:
        generation = self.generation
        yield event_record({"type": "start", "messageId": generation.prepared.response_id})
        is_text_started = False
        finish_reason = "other"
        try:
            async for chunk in generation:
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        if not is_text_started:
                            is_text_started = True
                            yield event_record({"type": "text-start", "id": TEXT_PART_ID})
                        yield event_record(
                            {"type": "text-delta", "id": TEXT_PART_ID, "delta": text}
                        )
                    if choice.get("finish_reason") is not None:
                        finish_reason = _FINISH_REASONS.get(choice["finish_reason"], "other")
        except Exception as exc:  # after the headers went out, errors travel in the stream
            yield event_record({"type": "error", "errorText": api_error_from(exc).message})
            yield end_record()
            return
        if is_text_started:
            yield event_record({"type": "text-end", "id": TEXT_PART_ID})
        yield event_record({"type": "finish", "finishReason": finish_reason})
        yield end_record({"usage": generation.usage})

    def stopped(self, reason: str, message: str) -> list[Record]:
        if reason == "cancelled":
            return [event_record({"type": "abort", "reason": message}), end_record()]
        return [event_record({"type": "error", "errorText": message}), end_record()]

    async def aclose(self, cancelled: bool = False) -> None:
        """Abort the request if unfinished."""
        await self.generation.aclose()
