"""Request processing never stalls the event loop: templating and tokenization run in worker
threads, each with its own tokenizer, while the engine keeps decoding and /health keeps
answering. The server's heartbeat (web/heartbeat.py) measures the longest stall.

NOTE: the strict bounds are on the heartbeat's `busy` time (CPU the event-loop thread spent
within one beat): it is what request processing on the loop would add, and it does not grow
when other processes crowd the machine. Wall-clock lateness does grow then (a busy 2-core CI
box or several test suites at once deschedule any thread for 100+ ms), so wall-clock bounds
here are loose: they still catch the seconds-long stalls of work done on the loop or of a
thread holding the GIL.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import trio

from tests.web.helpers import open_raw_request, read_until, stream_sse

pytestmark = pytest.mark.timeout(180)

# ~2,000 characters of varied text: about 450 tokens with the chat template.
LONG_TEXT = " ".join(
    f"Paragraph {i}: the fox (#{i * 7}) jumps over {i % 5} lazy dogs, then rests in the shade."
    for i in range(24)
)


def _chat(i: int) -> list[dict[str, str]]:
    """Request i's conversation: even ones fit the tiny model's 1,024-token context, odd ones
    (~3,000 tokens) do not, so the server must tokenize them fully to say by how much."""
    text = LONG_TEXT * (1 if i % 2 == 0 else 6)
    return [
        {"role": "system", "content": f"You are assistant number {i}."},
        {"role": "user", "content": f"{i}: {text}"},
    ]


async def _post_held_back(url: str, path: str, body: dict) -> tuple[trio.SocketStream, bytes]:
    """A POST sent but for its last byte, which the caller sends when it wants."""
    payload = orjson.dumps(body)
    host = url.removeprefix("http://")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    hostname, port = host.rsplit(":", 1)
    stream = await trio.open_tcp_stream(hostname, int(port))
    await stream.send_all(head + payload[:-1])
    return stream, payload[-1:]


async def _read_response(stream: trio.SocketStream) -> tuple[int, dict]:
    data = await read_until(stream, b"\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += await stream.receive_some(65536)
    await stream.aclose()
    return int(lines[0].split()[1]), orjson.loads(body)


async def test_200_long_chats_are_tokenized_while_the_engine_decodes(tiny_server, tokenizer):
    def num_tokens(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer.encode(text, add_special_tokens=False))

    expected_lengths = {i: num_tokens(_chat(i)) for i in range(1, 200, 2)}
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=120) as client:
        decoding: list = []

        async def decode() -> None:
            body = {"prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}
            decoding.append(await stream_sse(client, "/v1/completions", body))

        held = [
            await _post_held_back(
                tiny_server.url,
                "/v1/chat/completions",
                {"messages": _chat(i), "max_tokens": 1},
            )
            for i in range(200)
        ]
        results: dict[int, tuple[int, dict]] = {}

        async def finish(i: int) -> None:
            results[i] = await _read_response(held[i][0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(decode)
            await trio.sleep(0.2)  # the decode is under way
            tiny_server.heartbeat.reset()
            # All 200 bodies complete at once: on the event loop, their processing would be
            # one long burst.
            for stream, last_byte in held:
                await stream.send_all(last_byte)
            for i in range(200):
                nursery.start_soon(finish, i)
    heartbeat = tiny_server.heartbeat
    for i, (status, body) in sorted(results.items()):
        if i % 2 == 0:  # generated: "Already borrowed" or any other failure would not be 200
            assert status == 200 and body["usage"]["completion_tokens"] == 1, body
        else:  # refused after tokenizing, with the exact length a lone tokenizer gives
            assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
            assert f"has {expected_lengths[i]} tokens" in body["error"]["message"], body
    assert len(results) == 200
    assert decoding[0].is_done and decoding[0].chunks[-1]["choices"][0]["finish_reason"]
    assert heartbeat.num_beats > 20  # it was measuring all along
    assert heartbeat.max_busy_s < 0.05, f"the loop was busy for {heartbeat.max_busy_s:.3f} s"
    assert heartbeat.max_lag_s < 1.0, f"the loop stalled for {heartbeat.max_lag_s:.3f} s"


async def test_health_answers_within_100ms_while_two_15mib_prompts_are_processed(tiny_server):
    text = ("The quick brown fox jumps over the lazy dog. " * 350_000)[: 15 * 1024 * 1024]
    body = {"prompt": text, "max_tokens": 1}
    big_streams = [await open_raw_request(tiny_server.url, "/v1/completions", body) for _ in "ab"]
    latencies: list[float] = []
    answers: list[bytes] = []

    async def read_answer(stream: trio.SocketStream) -> None:
        answers.append(await read_until(stream, b"}}"))
        await stream.aclose()

    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=10) as client:
        tiny_server.heartbeat.reset()
        async with trio.open_nursery() as nursery:
            for stream in big_streams:
                nursery.start_soon(read_answer, stream)
            while len(answers) < 2:
                start = time.monotonic()
                response = await client.get("/health")
                latencies.append(time.monotonic() - start)
                assert response.status_code == 200
                await trio.sleep(0.02)
    for answer in answers:  # tokenized (millions of tokens), then refused by length
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        error = orjson.loads(payload)["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert len(latencies) > 20  # /health was asked throughout the processing
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.1, f"/health took {latencies} s"
    assert latencies[-1] < 1.0, f"/health took {latencies[-1]:.3f} s"
    heartbeat = tiny_server.heartbeat
    assert heartbeat.max_busy_s < 0.1, f"the loop was busy for {heartbeat.max_busy_s:.3f} s"


async def test_a_request_larger_than_the_queue_is_400_naming_the_limit(tiny_server):
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=30) as client:
        response = await client.post(
            "/v1/completions", json={"prompt": [[1]] * 3000, "max_tokens": 1}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt" and "max_num_waiting" in error["message"]
    assert "1024" in error["message"]
