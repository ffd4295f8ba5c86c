"""Resumable streams on a real tiny-model server: a dropped SSE or WebSocket client resumes
after 1 s and the reassembled text equals an uninterrupted greedy run; an expired stream's
generation is aborted and its blocks freed; another key cannot resume it."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.web.conftest import KEYED_SERVER_KEYS
from tests.web.helpers import metric, read_metrics, stream_sse, wait_for_metric
from triode.streaming.sse import DONE_DATA, SSEDecoder

pytestmark = pytest.mark.timeout(120)

KEY_A, KEY_B = KEYED_SERVER_KEYS
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
# Long enough to still be running 1 s after the drop (the tiny model: ~1-3 ms a step).
BODY = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


@pytest.fixture
def server(keyed_server):
    return keyed_server


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AUTH_A) as client:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        yield client


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))


_REFERENCE: dict[bytes, str] = {}


async def reference_text(client: httpx.AsyncClient, body: dict) -> str:
    """The text of an uninterrupted greedy run (once per body: the module's tests share it)."""
    key = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if key not in _REFERENCE:
        plain = await stream_sse(client, "/v1/completions", {**body, "stream": True})
        assert plain.is_done
        _REFERENCE[key] = plain.text()
    return _REFERENCE[key]


async def start_and_drop(
    server: Any, body: dict, num_events: int, headers: dict = AUTH_A
) -> list[Any]:
    """POST a streamed request on a connection of its own, read `num_events` SSE events, then
    close the connection (the client going away mid-answer)."""
    decoder, events = SSEDecoder(), []
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30, headers=headers) as own,
        own.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        with trio.fail_after(30):
            async for raw in response.aiter_raw():
                events.extend(decoder.feed_events(raw))
                if len(events) >= num_events:
                    break
    return events[:num_events]


async def resume_sse(
    client: httpx.AsyncClient, stream_id: str, last_event_id: str | None, **kwargs: Any
) -> tuple[list[int], list[Any]]:
    """GET /v1/streams/{id} and read to the end: (each event's id, each event's data)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    ids, datas, decoder = [], [], SSEDecoder()
    async with client.stream(
        "GET", f"/v1/streams/{stream_id}", headers=headers, **kwargs
    ) as response:
        assert response.status_code == 200, await response.aread()
        async for raw in response.aiter_raw():
            for event in decoder.feed_events(raw):
                ids.append(event.id)
                datas.append(event.data if event.data == DONE_DATA else orjson.loads(event.data))
    return ids, datas


async def test_sse_dropped_mid_answer_resumes_with_last_event_id(client, server):
    expected = await reference_text(client, BODY)
    body = {**BODY, "stream": True, "resumable": True, "resume_window_s": 10}
    first = await start_and_drop(server, body, 5)  # the phone changes networks
    seqs = [int(e.id) for e in first]
    assert seqs[: len(seqs)] == list(range(len(seqs)))
    chunks = [orjson.loads(e.data) for e in first]
    stream_id = chunks[0]["id"]
    assert all(c["id"] == stream_id for c in chunks)
    await trio.sleep(1.0)
    # Still generating for nobody: the drop did not abort it.
    assert metric(await read_metrics(client, ""), "num_requests_running") == 1

    before = await read_metrics(client, "")
    ids, datas = await resume_sse(client, stream_id, first[-1].id)
    assert datas[-1] == DONE_DATA
    resumed = [int(i) for i in ids]
    # No chunk lost or duplicated: numbering continues right after the last one seen.
    assert resumed == list(range(seqs[-1] + 1, seqs[-1] + 1 + len(resumed)))
    assert text_of(chunks) + text_of(datas[:-1]) == expected
    after = await read_metrics(client, "")
    assert metric(after, "resumable_streams_resumes_total") == (
        metric(before, "resumable_streams_resumes_total") + 1
    )

    # A finished stream stays readable for its window: ?after= replays from any point.
    ids_again, datas_again = await resume_sse(client, stream_id, None, params={"after": "2"})
    assert int(ids_again[0]) == 3 and datas_again[-1] == DONE_DATA
    assert text_of(chunks[:3]) + text_of(datas_again[:-1]) == expected


async def test_two_readers_both_get_every_chunk(client, server):
    body = {**BODY, "max_tokens": 300, "stream": True, "resumable": True}
    async with trio.open_nursery() as nursery:
        first_result: list[Any] = []

        async def first_tab() -> None:
            first_result.append(await stream_sse(client, "/v1/completions", body))

        nursery.start_soon(first_tab)
        await wait_for_metric(client, "", "resumable_streams_held", lambda v: v >= 1)
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 1)
    # The second tab joins while the first is still reading (the window keeps it after).
    first = first_result[0]
    stream_id = first.chunks[0]["id"]
    _, second = await resume_sse(client, stream_id, None)
    assert first.is_done and second[-1] == DONE_DATA
    assert second[:-1] == first.chunks


async def test_websocket_dropped_mid_answer_resumes_on_another_socket(client, server):
    expected = await reference_text(client, BODY)
    url = f"{server.ws_url}?api_key={KEY_A}"
    request = {**BODY, "resumable": True}
    seen: list[dict] = []
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "completion", "id": "g", "request": request})
        while len(seen) < 5:
            seen.append(await receive(ws))
    assert [m["seq"] for m in seen] == list(range(5))
    stream_id = seen[0]["chunk"]["id"]
    await trio.sleep(1.0)
    assert metric(await read_metrics(client, ""), "num_requests_running") == 1

    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "resume", "id": stream_id, "after": seen[-1]["seq"]})
        rest = []
        while not rest or rest[-1]["type"] == "chunk":
            rest.append(await receive(ws))
    assert rest[-1]["type"] == "done" and rest[-1]["id"] == stream_id
    assert rest[-1]["usage"]["completion_tokens"] == BODY["max_tokens"]
    assert [m["seq"] for m in rest] == list(range(5, 5 + len(rest)))
    assert all(m["id"] == stream_id for m in rest)
    text = text_of([m["chunk"] for m in seen]) + text_of([m["chunk"] for m in rest[:-1]])
    assert text == expected


async def test_expired_stream_is_aborted_and_its_blocks_freed(client, server):
    before = await read_metrics(client, "")
    body = {**BODY, "max_tokens": 1000, "stream": True, "resume_window_s": 0.5}
    stream_id = orjson.loads((await start_and_drop(server, body, 1))[0].data)["id"]
    await wait_for_metric(client, "", "resumable_streams_expired_total", lambda v: v >= 1 + (
        metric(before, "resumable_streams_expired_total")
    ))  # fmt: skip
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    after = await read_metrics(client, "")
    assert metric(after, "kv_cache_usage_perc") == 0.0  # every block back in the pool
    assert metric(after, "request_success_total", finished_reason="abort") == (
        metric(before, "request_success_total", finished_reason="abort") + 1
    )
    # It stays readable for its window, ending with why it stopped; then it is gone.
    response = await client.get(f"/v1/streams/{stream_id}", params={"after": "0"})
    if response.status_code == 200:
        events = SSEDecoder().feed(response.content)
        assert orjson.loads(events[-2])["error"]["code"] == "expired"
    with trio.fail_after(10):  # then, its window after the last reader left, it is gone
        while (await client.get(f"/v1/streams/{stream_id}")).status_code != 404:
            await trio.sleep(0.05)


async def test_another_key_cannot_resume_or_cancel(client, server):
    body = {**BODY, "max_tokens": 1000, "stream": True, "resumable": True}
    stream_id = orjson.loads((await start_and_drop(server, body, 1))[0].data)["id"]
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/v1/streams/{stream_id}", headers=AUTH_B)
        assert response.status_code == 404 and response.json()["error"]["code"] == (
            "stream_not_found"
        )
    async with open_websocket_url(f"{server.ws_url}?api_key={KEY_B}") as ws:
        await send(ws, {"type": "resume", "id": stream_id, "after": 0})
        refused = await receive(ws)
    assert refused["type"] == "error" and refused["error"]["code"] == "stream_not_found"
    # Its owner stops it: the generation ends for every reader, the blocks go back.
    response = await client.delete(f"/v1/streams/{stream_id}")
    assert response.status_code == 200 and response.json()["cancelled"] is True
    await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
    _, datas = await resume_sse(client, stream_id, None, params={"after": "0"})
    assert datas[-2]["error"]["code"] == "cancelled" and datas[-1] == DONE_DATA


async def test_bad_resume_requests_are_400_or_404(client, server):
    assert (await client.get("/v1/streams/chatcmpl-nope")).status_code == 404
    body = {**BODY, "max_tokens": 20, "stream": True, "resumable": True}
    done = await stream_sse(client, "/v1/completions", body)
    stream_id = done.chunks[0]["id"]
    for value, code in (("abc", None), ("-5", None), ("100000", "invalid_sequence_number")):
        response = await client.get(f"/v1/streams/{stream_id}", headers={"Last-Event-ID": value})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "after"
        assert code is None or response.json()["error"]["code"] == code
    # A non-streamed request cannot be resumable; a window past the server's limit is refused.
    for bad in ({"resumable": True}, {"stream": True, "resume_window_s": 10_000}):
        response = await client.post("/v1/completions", json={**BODY, "max_tokens": 2, **bad})
        assert response.status_code == 400, response.text


async def send(ws: WebSocketConnection, message: Any) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def receive(ws: WebSocketConnection) -> dict:
    with trio.fail_after(30):
        return orjson.loads(await ws.get_message())
