"""Framed pickles between the actor and its engine process: whatever way the bytes are cut,
every message arrives whole, in order, once."""

from __future__ import annotations

import socket

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triode.engine.process.wire import BlockingFrames, TrioFrames, encode
from triode.streaming.delta import RequestDelta

messages = st.lists(
    st.one_of(
        st.tuples(st.just("abort"), st.lists(st.text(max_size=8), max_size=4)),
        st.builds(
            RequestDelta,
            request_id=st.text(max_size=8),
            index=st.integers(0, 3),
            text=st.text(max_size=40),
            token_ids=st.lists(st.integers(0, 49151), max_size=20),
        ),
        st.binary(max_size=300),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(messages, st.lists(st.integers(1, 97), min_size=1, max_size=8))
def test_blocking_side_reassembles_any_cut(sent, cuts):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        frames = BlockingFrames(theirs)
        data = b"".join(encode(m) for m in sent)
        received = []
        pos, i = 0, 0
        while pos < len(data):  # the bytes arrive in pieces of the drawn sizes
            size = cuts[i % len(cuts)]
            ours.sendall(data[pos : pos + size])
            pos += size
            i += 1
            while (message := frames.receive(block=False)) is not None:
                received.append(message)
        assert frames.receive(block=False) is None
        assert received == sent


def test_trio_side_round_trip_and_eof():
    async def main() -> None:
        ours, theirs = socket.socketpair()
        frames = TrioFrames(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        child = BlockingFrames(theirs)
        big = ("out", [RequestDelta("r", 0, text="x" * 200_000)])
        await frames.send(("add", "r", [1, 2, 3]))
        assert child.receive() == ("add", "r", [1, 2, 3])

        async def answer() -> None:
            child.send(big)  # larger than a socket buffer: arrives in many reads
            theirs.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: trio.from_thread.run(answer))
            assert await frames.receive() == big
        try:
            await frames.receive()
        except EOFError:
            pass
        else:
            raise AssertionError("a closed peer must read as EOFError")
        await frames.stream.aclose()

    trio.run(main)
