"""The SPSC ring buffer: FIFO semantics against a model, and integrity under real concurrency."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimsvoice.audio.ringbuffer import RingBuffer


def test_write_read_wraps_around_and_reports_partial_transfers() -> None:
    ring = RingBuffer(8)
    assert ring.write(np.arange(6, dtype=np.float32)) == 6
    out = np.full(4, -1.0, dtype=np.float32)
    assert ring.read_into(out) == 4
    np.testing.assert_array_equal(out, [0, 1, 2, 3])
    # 2 left; 6 free, of which only 6 fit: the write wraps past the end of storage
    assert ring.write(np.arange(10, 20, dtype=np.float32)) == 6
    assert ring.readable() == 8 and ring.writable() == 0
    assert ring.write(np.ones(3, dtype=np.float32)) == 0
    out = np.full(10, -1.0, dtype=np.float32)
    assert ring.read_into(out) == 8
    np.testing.assert_array_equal(out[:8], [4, 5, 10, 11, 12, 13, 14, 15])
    np.testing.assert_array_equal(out[8:], [-1, -1])  # untouched beyond what was read
    assert ring.read_into(out) == 0


def test_strided_views_in_and_out() -> None:
    """Callbacks hand column views of (frames, channels) arrays; they must copy correctly."""
    ring = RingBuffer(16)
    stereo = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert ring.write(stereo[:, 1]) == 10
    out = np.zeros((10, 2), dtype=np.float32)
    assert ring.read_into(out[:, 0]) == 10
    np.testing.assert_array_equal(out[:, 0], stereo[:, 1])
    np.testing.assert_array_equal(out[:, 1], 0)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RingBuffer(0)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    ops=st.lists(st.tuples(st.sampled_from(["write", "read"]), st.integers(0, 80)), max_size=60),
)
def test_behaves_like_a_bounded_fifo(capacity: int, ops: list[tuple[str, int]]) -> None:
    ring = RingBuffer(capacity)
    model: deque[float] = deque()
    counter = 0
    for op, n in ops:
        if op == "write":
            data = np.arange(counter, counter + n, dtype=np.float32)
            written = ring.write(data)
            assert written == min(n, capacity - len(model))
            model.extend(data[:written].tolist())
            counter += n
        else:
            out = np.zeros(n, dtype=np.float32)
            got = ring.read_into(out)
            expected = [model.popleft() for _ in range(min(n, len(model)))]
            assert got == len(expected)
            assert out[:got].tolist() == expected
        assert ring.readable() == len(model)
        assert ring.writable() == capacity - len(model)


@pytest.mark.parametrize(("capacity", "total"), [(7, 60_000), (1000, 400_000)])
def test_concurrent_producer_and_consumer_lose_nothing(capacity: int, total: int) -> None:
    """Two threads hammer both ends with odd chunk sizes; the consumer sees 0, 1, 2, ... exactly.

    Float32 holds integers exactly up to 2**24, so the sequence is checked sample by sample. The
    small capacity makes both threads meet the full and empty states constantly; a tiny GIL switch
    interval interleaves them at many more points than the default 5 ms would.
    """
    ring = RingBuffer(capacity)
    errors: list[str] = []

    def produce() -> None:
        rng = np.random.default_rng(1)
        sent = 0
        while sent < total:
            n = int(rng.integers(1, 97))
            chunk = np.arange(sent, min(sent + n, total), dtype=np.float32)
            written = ring.write(chunk)
            sent += written
            if not written:
                time.sleep(0)  # full: let the consumer run

    def consume() -> None:
        rng = np.random.default_rng(2)
        expected = 0
        out = np.empty(128, dtype=np.float32)
        while expected < total:
            n = int(rng.integers(1, 129))
            got = ring.read_into(out[:n])
            if got and not np.array_equal(out[:got], np.arange(expected, expected + got, dtype=np.float32)):
                errors.append(f"wrong samples at {expected}: {out[:got][:5]}")
                return
            expected += got
            if not got:
                time.sleep(0)  # empty: let the producer run

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert ring.readable() == 0
