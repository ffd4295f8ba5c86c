"""ResponseStore: count, byte and age bounds, least-recently-used eviction, owners; examples and
a property-based run against a plain reference (a list in use order)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from triode.web.response_store import ENTRY_OVERHEAD_BYTES, ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def put(store: ResponseStore, response_id: str, owner: str | None = "k", text: str = "") -> None:
    history = [{"role": "user", "content": text}]
    store.put(response_id, {"id": response_id}, history, owner)


def test_least_recently_used_goes_first_past_the_count():
    store = ResponseStore(max_responses=2, max_bytes=1 << 20, ttl_s=60)
    put(store, "a")
    put(store, "b")
    assert store.get("a", "k") is not None  # a is now the most recently used
    put(store, "c")
    assert store.get("b", "k") is None and store.get("a", "k") is not None
    assert len(store) == 2


def test_bytes_bound_and_an_entry_too_big_alone():
    store = ResponseStore(max_responses=100, max_bytes=3 * ENTRY_OVERHEAD_BYTES, ttl_s=60)
    put(store, "a", text="x" * 100)
    put(store, "b", text="x" * 100)
    put(store, "c", text="x" * 100)  # over the bytes: "a" goes
    assert [store.get(i, "k") is not None for i in "abc"] == [False, True, True]
    put(store, "huge", text="x" * 10_000)
    assert len(store) == 0 and store.num_bytes == 0


def test_entries_expire_and_belong_to_their_owner():
    clock = Clock()
    store = ResponseStore(max_responses=10, max_bytes=1 << 20, ttl_s=10, clock=clock)
    put(store, "a", owner="alice")
    assert store.get("a", "bob") is None and not store.delete("a", "bob")
    clock.now = 9.9
    put(store, "b", owner="alice")
    assert store.get("a", "alice") is not None
    clock.now = 10.1  # "a" was stored 10.1 s ago; use does not extend an age
    assert store.get("a", "alice") is None and store.get("b", "alice") is not None
    assert store.delete("b", "alice") and len(store) == 0 and store.num_bytes == 0


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "delete", "wait"]),
        st.integers(0, 3),  # which id
        st.integers(0, 200),  # text length, or seconds to wait, times 25
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, max_responses=st.integers(1, 6), max_kib=st.integers(1, 8))
def test_store_against_a_reference(ops, max_responses, max_kib):
    clock = Clock()
    ttl_s = 10.0
    store = ResponseStore(max_responses, max_kib * 1024, ttl_s, clock=clock)
    # The reference: (id, size, stored_at) in use order, oldest first.
    reference: list[tuple[str, int, float]] = []

    def expire() -> None:
        reference[:] = [e for e in reference if e[2] >= clock.now - ttl_s]

    for op, index, amount in ops:
        response_id = f"resp_{index}"
        if op == "put":
            reference[:] = [e for e in reference if e[0] != response_id]
            put(store, response_id, text="x" * amount)
            size = len(b'{"id":"resp_0"}') + ENTRY_OVERHEAD_BYTES + amount + len("user")
            reference.append((response_id, size, clock.now))
            expire()
            while reference and (
                len(reference) > max_responses or sum(e[1] for e in reference) > max_kib * 1024
            ):
                reference.pop(0)
        elif op == "get":
            expire()
            found = store.get(response_id, "k")
            match = [e for e in reference if e[0] == response_id]
            assert (found is not None) == bool(match)
            if match:
                reference.remove(match[0])
                reference.append(match[0])
        elif op == "delete":
            expire()
            assert store.delete(response_id, "k") == any(e[0] == response_id for e in reference)
            reference[:] = [e for e in reference if e[0] != response_id]
        else:
            clock.now += amount / 25
        assert store.num_bytes <= max_kib * 1024 and len(store) <= max_responses
        expire()
        assert store.ids() == [e[0] for e in reference]  # the same entries, in use order
    expire()
    store.get("none", "k")  # expires in the store too
    assert len(store) == len(reference)
    assert store.num_bytes == sum(e[1] for e in reference)
