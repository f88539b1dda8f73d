"""The shuffle buffer: every row exactly once, mixed across parts, seeded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.cache.stream import in_background, shuffle_buffer


def _parts(n_parts=10, rows=50):
    return [(np.arange(i * rows, (i + 1) * rows), np.arange(i * rows, (i + 1) * rows) * 10) for i in range(n_parts)]


def test_every_row_once_and_aligned():
    batches = list(shuffle_buffer(_parts(), batch_size=32, buffer_size=200, seed=0))
    ids = np.concatenate([b[0] for b in batches])
    assert sorted(ids.tolist()) == list(range(500))
    for a, b in batches:
        np.testing.assert_array_equal(b, a * 10)  # the arrays stay aligned row by row
    assert all(len(b[0]) == 32 for b in batches[:-1])


def test_mixes_rows_from_different_parts():
    first = next(iter(shuffle_buffer(_parts(), batch_size=64, buffer_size=200, seed=0)))[0]
    assert len(set((first // 50).tolist())) >= 3  # rows of at least 3 parts in the first batch


def test_seeded_and_in_order_without_buffer():
    a = [b[0] for b in shuffle_buffer(_parts(), batch_size=32, buffer_size=200, seed=1)]
    b = [b[0] for b in shuffle_buffer(_parts(), batch_size=32, buffer_size=200, seed=1)]
    c = [b[0] for b in shuffle_buffer(_parts(), batch_size=32, buffer_size=200, seed=2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_drop_last():
    batches = list(shuffle_buffer(_parts(), batch_size=64, buffer_size=1, seed=0, drop_last=True))
    assert all(len(b[0]) == 64 for b in batches) and sum(len(b[0]) for b in batches) == 448
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), np.arange(448))  # in order


@pytest.mark.parametrize(("n", "bundle"), [(0, 4), (1, 4), (9, 4), (12, 4), (7, 1)])
def test_in_background_yields_every_item_in_order_whatever_the_bundle(n, bundle):
    assert list(in_background(iter(range(n)), depth=2, bundle=bundle)) == list(range(n))


def test_in_background_raises_the_producers_error_after_the_items_before_it():
    def items():
        yield from range(6)
        raise KeyError("bad chunk")

    got = []
    with pytest.raises(KeyError, match="bad chunk"):
        for x in in_background(items(), depth=2, bundle=4):
            got.append(x)
    assert got == list(range(6))  # the partial last bundle comes before the error


def test_in_background_stops_its_thread_when_closed_early():
    made = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    it = in_background(items(), depth=2, bundle=4)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    deadline = time.monotonic() + 5
    while any(t.name == "token-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "token-stream" for t in threading.enumerate())
    assert len(made) <= 4 * (2 + 2)  # at most the bundles queued, the one being handed over and the one taken
