"""ResponsesRecords: a chat Generation as the Responses API's event stream, and its Response.

The events, each with its `sequence_number` (also the resumable stream's sequence number):
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, one `response.output_text.delta` per chunk with text,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`, then
`response.completed` (or `response.incomplete` when `max_output_tokens` cut it short). A
failure after the stream began, or a stream stopped early (cancelled, expired, evicted), ends
with `response.failed` carrying `error: {code, message}`. SSE names each event (`event:` line)
and sends no `[DONE]`; the WebSocket mode sends the same objects as messages.

With `store`, the Response is kept in the ResponseStore from its creation (in progress) to its
end, with the conversation it completes, for `previous_response_id` and GET.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from triode.streaming.records import Record, end_record, event_record
from triode.web.errors import api_error_from
from triode.web.generation import Generation
from triode.web.response_store import ResponseStore
from triode.web.responses_protocol import ResponsesRequest


class ResponsesRecords:
    def __init__(
        self,
        generation: Generation,
        request: ResponsesRequest,
        history: list[dict[str, str]],
        store: ResponseStore,
        owner: str | None,
    ) -> None:
        self.generation = generation
        self.request = request
        self.history = history  # the conversation before this turn's output
        self._store = store
        self._owner = owner
        self._sequence = 0
        self._item_id = f"msg_{uuid.uuid4().hex}"
        self._text_parts: list[str] = []
        self.response = self._response("in_progress")
        self._save()

    @property
    def response_id(self) -> str:
        return self.generation.prepared.response_id

    # ---- the Response object --------------------------------------------------------------
    def _response(self, status: str) -> dict[str, Any]:
        request, prepared = self.request, self.generation.prepared
        return {
            "id": prepared.response_id,
            "object": "response",
            "created_at": prepared.created,
            "status": status,
            "model": prepared.model,
            "output": [],
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "previous_response_id": request.previous_response_id,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
            "store": request.store,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "metadata": request.metadata or {},
            "user": request.user,
            "error": None,
            "incomplete_details": None,
            "usage": None,
        }

    def _message(self, status: str) -> dict[str, Any]:
        content = [self._text_part()] if status != "in_progress" else []
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _text_part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": "".join(self._text_parts),
            "annotations": [],
            "logprobs": [],
        }

    def _usage(self) -> dict[str, Any]:
        usage = self.generation.usage
        return {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": usage["prompt_tokens_details"],
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        }

    def _finish(self, status: str, **fields: Any) -> dict[str, Any]:
        response = self._response(status)
        response["output"] = [self._message("completed" if status == "completed" else status)]
        response["usage"] = self._usage()
        response["completed_at"] = int(time.time())
        response.update(fields)
        self.response = response
        self._save()
        return response

    def _save(self) -> None:
        if not self.request.store:
            return
        output = "".join(self._text_parts)
        history = [*self.history]
        if self.response["status"] != "in_progress":
            history.append({"role": "assistant", "content": output})
        self._store.put(self.response_id, self.response, history, self._owner)

    # ---- events -----------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> Record:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event_record(payload, kind)

    def _item_fields(self) -> dict[str, Any]:
        return {"item_id": self._item_id, "output_index": 0, "content_index": 0}

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[Record]:
        yield self._event("response.created", response=self.response)
        yield self._event("response.in_progress", response=self.response)
        yield self._event(
            "response.output_item.added", output_index=0, item=self._message("in_progress")
        )
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self._event("response.content_part.added", **self._item_fields(), part=empty)
        finish_reason = None
        try:
            async for chunk in self.generation:
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        self._text_parts.append(text)
                        yield self._event(
                            "response.output_text.delta", **self._item_fields(), delta=text,
                            logprobs=[],
                        )  # fmt: skip
                    finish_reason = choice.get("finish_reason") or finish_reason
        except Exception as exc:  # after the stream began, errors travel in it
            error = api_error_from(exc)
            for record in self._failed(error.code or "server_error", error.message):
                yield record
            return
        text = "".join(self._text_parts)
        yield self._event(
            "response.output_text.done", **self._item_fields(), text=text, logprobs=[]
        )
        yield self._event(
            "response.content_part.done", **self._item_fields(), part=self._text_part()
        )
        yield self._event(
            "response.output_item.done", output_index=0, item=self._message("completed")
        )
        if finish_reason == "length":
            response = self._finish(
                "incomplete", incomplete_details={"reason": "max_output_tokens"}
            )
            yield self._event("response.incomplete", response=response)
        else:
            yield self._event("response.completed", response=self._finish("completed"))
        yield end_record()

    def _failed(self, code: str, message: str) -> list[Record]:
        status = "cancelled" if code == "cancelled" else "failed"
        response = self._finish(status, error={"code": code, "message": message})
        return [self._event("response.failed", response=response), end_record()]

    def stopped(self, reason: str, message: str) -> list[Record]:
        return self._failed(reason, message)

    async def aclose(self, cancelled: bool = False) -> None:
        """Abort the request if unfinished."""
        await self.generation.aclose()
