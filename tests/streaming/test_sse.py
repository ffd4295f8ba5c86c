"""SSE framing: the bytes on the wire, and the decoder reading them back however they are split."""

from __future__ import annotations

from triode.streaming.sse import DONE, SSEDecoder, encode_comment, encode_event


def test_event_bytes_are_openai_framing():
    assert encode_event({"a": 1, "b": "é"}) == b'data: {"a":1,"b":"\xc3\xa9"}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert encode_comment("ping") == b": ping\n\n"


def test_decoder_reassembles_events_split_at_every_byte():
    wire = encode_event({"x": "hello\nworld"}) + encode_comment("keep-alive") + DONE
    decoder = SSEDecoder()
    events = []
    for i in range(len(wire)):
        events += decoder.feed(wire[i : i + 1])
    assert events == ['{"x":"hello\\nworld"}', "[DONE]"]


def test_decoder_handles_crlf_and_multiline_data():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\ndata: b\r\n\r\ndata:c\n\n") == ["a\nb", "c"]
    assert decoder.feed(b"event: x\nid: 1\n\n") == []  # no data: no event
