"""StreamStore and ResumableStream: replay and live following, expiry by trio deadline, the
per-stream and total byte bounds, cancellation, and cleanup (every byte and every generation
released), with examples and a property-based run against a plain reference."""

from __future__ import annotations

import itertools

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triode.streaming.records import Record, RecordKind, end_record, error_record, event_record
from triode.streaming.resumable import RECORD_OVERHEAD_BYTES, StreamGoneError, StreamReader
from triode.streaming.stream_store import StreamStore

WINDOW_S = 5.0


class ScriptedSource:
    """A generation whose records the test pushes; `aclose` records the abort."""

    def __init__(self) -> None:
        self.push, self._inbox = trio.open_memory_channel[Record](1000)
        self.is_closed = False
        self.is_aborted = False  # closed before its terminal record was produced
        self._is_done = False

    def __aiter__(self) -> ScriptedSource:
        return self

    async def __anext__(self) -> Record:
        try:
            record = await self._inbox.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._is_done = record.is_terminal
        return record

    def stopped(self, reason: str, message: str) -> list[Record]:
        return [error_record({"message": message, "type": "server_error", "code": reason})]

    async def aclose(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self.is_aborted = not self._is_done


def text(i: int, size: int = 10) -> Record:
    return event_record({"i": i, "pad": "x" * size})


async def read_all(reader: StreamReader) -> list[Record]:
    try:
        return [record async for record in reader]
    finally:
        reader.close()


@pytest.fixture
async def store(nursery):
    store = StreamStore(max_total_bytes=1 << 20, max_stream_bytes=1 << 16)
    await nursery.start(store.run)
    return store


def start(store: StreamStore, stream_id: str = "s", window_s: float = WINDOW_S):
    source = ScriptedSource()
    reader = store.start(stream_id, "test", source, owner="key", window_s=window_s)
    return source, reader


async def test_two_readers_replay_then_follow_live(store, nursery):
    source, first = start(store)
    for i in range(3):
        source.push.send_nowait(text(i))
    await trio.testing.wait_all_tasks_blocked()
    stream = store.get("s", "key")
    assert stream is not None and store.get("s", "other-key") is None  # owners only
    second = store.resume(stream, after=0)  # saw record 0, missed 1 and 2
    results: dict[str, list[Record]] = {}

    async def read(name: str, reader: StreamReader) -> None:
        results[name] = await read_all(reader)

    nursery.start_soon(read, "first", first)
    nursery.start_soon(read, "second", second)
    await trio.testing.wait_all_tasks_blocked()
    source.push.send_nowait(text(3))
    source.push.send_nowait(end_record({"usage": 4}))
    await trio.testing.wait_all_tasks_blocked()
    assert [r.seq for r in results["first"]] == [0, 1, 2, 3, 4]
    assert results["second"] == results["first"][1:]
    assert results["first"][-1].kind is RecordKind.END
    assert store.counters.num_resumes == 1 and not source.is_aborted
    with pytest.raises(StreamGoneError):
        store.resume(stream, after=5)  # past the end


async def test_no_reader_for_the_window_aborts_then_drops(store, autojump_clock):
    source, reader = start(store)
    source.push.send_nowait(text(0))
    await trio.testing.wait_all_tasks_blocked()
    reader.close()  # the client went away
    await trio.sleep(WINDOW_S - 0.1)
    assert not source.is_closed  # still generating, waiting for a resume
    await trio.sleep(0.2)
    assert source.is_aborted and store.counters.num_expired == 1
    # Its window has passed with no reader: nothing is kept.
    assert store.get("s", "key") is None
    assert (store.num_streams, store.num_bytes) == (0, 0)
    records = await read_all(reader)  # a reader still holding it learns why it ended
    assert orjson.loads(records[-1].payload)["code"] == "expired"


async def test_a_finished_stream_is_kept_for_its_window(store, autojump_clock):
    source, reader = start(store)
    source.push.send_nowait(end_record())
    assert len(await read_all(reader)) == 1  # the client read it all, then left
    await trio.sleep(WINDOW_S - 0.1)
    stream = store.get("s", "key")
    assert stream is not None and not source.is_aborted
    assert len(await read_all(store.resume(stream, after=-1))) == 1  # it lost the last bytes
    await trio.sleep(WINDOW_S + 0.1)
    assert store.get("s", "key") is None and (store.num_streams, store.num_bytes) == (0, 0)


async def test_a_resume_lifts_the_deadline(store, autojump_clock):
    source, reader = start(store)
    reader.close()
    await trio.sleep(WINDOW_S / 2)
    stream = store.get("s", "key")
    assert stream is not None
    again = store.resume(stream, after=-1)
    await trio.sleep(WINDOW_S * 10)
    assert not source.is_closed and store.counters.num_expired == 0
    again.close()  # a new window starts from here
    await trio.sleep(WINDOW_S + 0.1)
    assert source.is_aborted and store.counters.num_expired == 1


async def test_a_stream_over_its_own_bound_is_stopped(nursery):
    store = StreamStore(max_total_bytes=1 << 20, max_stream_bytes=10 * (RECORD_OVERHEAD_BYTES + 30))
    await nursery.start(store.run)
    source, reader = start(store)
    for i in range(50):
        source.push.send_nowait(text(i))
    records = await read_all(reader)
    assert source.is_aborted and store.counters.num_overflowed == 1
    assert orjson.loads(records[-1].payload)["code"] == "overflow"
    assert [r.seq for r in records] == list(range(len(records)))
    stream_bytes = sum(len(r.payload) + RECORD_OVERHEAD_BYTES for r in records[:-1])
    assert stream_bytes <= store.max_stream_bytes


async def test_over_the_total_bound_the_oldest_unread_stream_is_evicted(nursery):
    record_bytes = len(text(0).payload) + RECORD_OVERHEAD_BYTES
    store = StreamStore(max_total_bytes=25 * record_bytes, max_stream_bytes=1 << 20)
    await nursery.start(store.run)
    old, old_reader = start(store, "old")
    new, new_reader = start(store, "new")
    old_reader.close()  # nobody reads "old": it goes first
    for i in range(10):
        old.push.send_nowait(text(i))
        new.push.send_nowait(text(i))
    await trio.testing.wait_all_tasks_blocked()
    assert store.num_bytes == 20 * record_bytes
    for i in range(10, 16):
        new.push.send_nowait(text(i))
        await trio.testing.wait_all_tasks_blocked()
        assert store.num_bytes <= store.max_total_bytes
    assert old.is_aborted and not new.is_closed and store.counters.num_evicted == 1
    assert store.get("old", "key") is None  # its memory went at once
    assert store.num_bytes == sum(len(text(i).payload) + RECORD_OVERHEAD_BYTES for i in range(16))
    new.push.send_nowait(end_record())
    assert len(await read_all(new_reader)) == 17


async def test_cancel_stops_the_generation_for_every_reader(store, nursery):
    source, first = start(store)
    stream = store.get("s", "key")
    assert stream is not None
    second = store.resume(stream, -1)
    results = []

    async def read(reader: StreamReader) -> None:
        results.append(await read_all(reader))

    nursery.start_soon(read, first)
    nursery.start_soon(read, second)
    source.push.send_nowait(text(0))
    await trio.testing.wait_all_tasks_blocked()
    store.cancel(stream)
    await trio.testing.wait_all_tasks_blocked()
    assert source.is_aborted and store.counters.num_cancelled == 1
    assert len(results) == 2 and results[0] == results[1]
    assert orjson.loads(results[0][-1].payload)["code"] == "cancelled"


# ---- property-based: random streams, readers, records and time against a reference ----------

_PUSH = st.tuples(st.just("push"), st.integers(0, 3), st.integers(0, 300))
_OPS = st.lists(
    st.one_of(
        _PUSH,
        _PUSH,
        _PUSH,
        st.tuples(st.just("end"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("read"), st.integers(0, 3), st.integers(-1, 12)),
        st.tuples(st.just("leave"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("sleep"), st.integers(1, 4), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, total_bytes=st.integers(500, 6000), stream_bytes=st.integers(300, 3000))
def test_store_against_a_reference(ops: list[tuple[str, int, int]], total_bytes, stream_bytes):
    """Whatever happens, every reader gets exactly the records pushed after its position, in
    order, then one terminal record (the end, or why it stopped); the byte count is the sum of
    what streams hold and stays within the bound; at the end every generation was closed
    (aborted unless it ended) and nothing is held."""

    async def main() -> None:
        store = StreamStore(max_total_bytes=total_bytes, max_stream_bytes=stream_bytes)
        sources: list[ScriptedSource] = []
        pushed: list[list[Record]] = []  # the reference: what each source produced
        readers: list[tuple[int, int, StreamReader]] = []
        results: list[tuple[int, int, list[Record]]] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)

            async def read(index: int, after: int, reader: StreamReader) -> None:
                results.append((index, after, await read_all(reader)))

            for index in range(4):
                source, reader = start(store, f"s{index}", window_s=2.0)
                sources.append(source)
                pushed.append([])
                readers.append((index, -1, reader))
                nursery.start_soon(read, index, -1, reader)
            for op, a, b in ops:
                if op == "push" and not (pushed[a] and pushed[a][-1].is_terminal):
                    record = text(len(pushed[a]), b)
                    pushed[a].append(record)
                    sources[a].push.send_nowait(record)
                elif op == "end" and not (pushed[a] and pushed[a][-1].is_terminal):
                    pushed[a].append(end_record())
                    sources[a].push.send_nowait(pushed[a][-1])
                elif op == "read" and (stream := store.get(f"s{a}", "key")) is not None:
                    try:
                        reader = store.resume(stream, b)
                    except StreamGoneError:
                        assert not -1 <= b < stream.next_seq
                    else:
                        readers.append((a, b, reader))
                        nursery.start_soon(read, a, b, reader)
                elif op == "leave":
                    readers[a % len(readers)][2].close()
                elif op == "cancel" and (stream := store.get(f"s{a}", "key")) is not None:
                    store.cancel(stream)
                elif op == "sleep":
                    await trio.sleep(a * 0.5)
                await trio.testing.wait_all_tasks_blocked()
                held = sum(s.num_bytes for s in store._streams.values())
                assert store.num_bytes == held
                # Only the small records that say how a stream ended may pass the bound.
                endings = sum(
                    len(s._records[-1].payload) + RECORD_OVERHEAD_BYTES
                    for s in store._streams.values()
                    if s.is_finished and s._records
                )
                assert store.num_bytes - endings <= store.max_total_bytes
            for _, _, reader in readers:
                reader.close()
            await trio.sleep(10)  # every window passes
            await trio.testing.wait_all_tasks_blocked()
            assert (store.num_streams, store.num_bytes) == (0, 0)
            assert all(s.is_closed for s in sources)
            nursery.cancel_scope.cancel()
        for index, after, records in results:
            reason = check_reader(pushed[index], after, records)
            # What readers were told matches what happened to the generation (an evicted
            # stream may have finished before its log was dropped).
            if reason == "end":
                assert not sources[index].is_aborted
            elif reason in ("expired", "cancelled", "overflow"):
                assert sources[index].is_aborted

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def check_reader(pushed: list[Record], after: int, records: list[Record]) -> str | None:
    """A reader's records: the pushed ones from `after + 1` on, in order, none skipped unless
    the stream was evicted (its log dropped), ending with one terminal record. Returns how
    the stream ended: "end", or the code of the error that stopped it (None: the reader
    resumed after the terminal record, so it had nothing left to read)."""
    if not records:
        assert after >= 0
        return None
    assert records[-1].is_terminal
    assert not any(r.is_terminal for r in records[:-1])
    seqs = [r.seq for r in records]
    last = records[-1]
    reason = "end" if last.kind is RecordKind.END else orjson.loads(last.payload)["code"]
    if reason == "evicted":
        assert all(a < b for a, b in itertools.pairwise(seqs))  # type: ignore[operator]
        assert seqs[0] is not None and seqs[0] > after
    else:
        assert seqs == list(range(after + 1, after + 1 + len(records)))
    for record in records:
        assert record.seq is not None
        if record.kind is RecordKind.EVENT:
            assert record.payload == pushed[record.seq].payload  # the very record pushed
        elif record.kind is RecordKind.END:
            assert pushed[record.seq] is not None and pushed[record.seq].is_terminal
    return reason
