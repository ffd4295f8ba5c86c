"""One client's bad ids never touch another's stream (issue 11's three-request kill).

Before, `stop_token_ids: [1000000]` with min_tokens passed validation and raised IndexError
inside the step: a 500, every other request in that step failed, and the third such request
marked the engine dead. Now the engine refuses it at its boundary with a 400 naming the field.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.web.helpers import stream_sse, wait_for_metric

pytestmark = pytest.mark.timeout(120)

BAD = {"prompt": "Hi", "max_tokens": 4, "min_tokens": 2, "stop_token_ids": [1000000]}


async def test_bad_stop_token_ids_get_a_400_and_touch_no_other_stream(tiny_server):
    innocent_body = {
        "prompt": "Once upon a time",
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=60) as client:
        await wait_for_metric(client, "", "num_requests_running", lambda v: v == 0)
        results = {}

        async def innocent() -> None:
            results["innocent"] = await stream_sse(client, "/v1/completions", innocent_body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent)
            await wait_for_metric(client, "", "num_requests_running", lambda v: v >= 1)
            for _ in range(3):
                for path, body in (
                    ("/v1/completions", BAD),
                    (
                        "/v1/chat/completions",
                        {**BAD, "messages": [{"role": "user", "content": "Hi"}]},
                    ),
                ):
                    response = await client.post(path, json=body)
                    assert response.status_code == 400, response.text
                    error = response.json()["error"]
                    assert error["param"] == "stop_token_ids"
                    assert error["type"] == "invalid_request_error"
                    assert "stop_token_ids" in error["message"]
            assert (await client.get("/health")).status_code == 200

        sse = results["innocent"]
        assert sse.status == 200 and sse.is_done
        assert not any("error" in chunk for chunk in sse.chunks)
        assert sse.chunks[-1]["usage"]["completion_tokens"] == 200
        assert sse.chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert (await client.get("/health")).status_code == 200
