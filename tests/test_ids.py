"""TIDs: strictly increasing ZODB timestamps, whatever the clock does."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from persistent.TimeStamp import TimeStamp

from neostore.ids import ZERO_TID, TidGenerator, p64, partition_of, tid_time, timestamp_tid, u64

NOW = 1_790_000_000.0


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_p64_u64_round_trip(value: int) -> None:
    assert u64(p64(value)) == value
    assert len(p64(value)) == 8


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=-3600 * 24 * 365, max_value=3600 * 24 * 365, allow_nan=False),
            st.integers(min_value=1, max_value=4096),
            st.integers(min_value=0, max_value=2**40),
        ),
        min_size=1, max_size=50,
    )
)
def test_tids_grow_strictly_under_any_clock(steps: list[tuple[float, int, int]]) -> None:
    clock = [NOW]
    generator = TidGenerator(clock=lambda: clock[0])
    last = ZERO_TID
    for offset, num_partitions, ttid in steps:
        clock[0] = NOW + offset  # the clock jumps anywhere, back or forth
        tid = generator.next(num_partitions, p64(ttid))
        assert tid > last
        assert partition_of(tid, num_partitions) == ttid % num_partitions
        last = tid


def test_tid_follows_the_clock_when_it_moves_forward() -> None:
    clock = [NOW]
    generator = TidGenerator(clock=lambda: clock[0])
    first = generator.next()
    clock[0] += 60
    second = generator.next()
    assert abs(tid_time(second) - tid_time(first) - 60) < 0.01
    assert abs(TimeStamp(first).timeTime() - NOW) < 0.01


def test_generator_never_goes_below_an_observed_tid() -> None:
    generator = TidGenerator(clock=time.time)
    future = p64(timestamp_tid(time.time() + 3600))
    generator.observe(future)
    assert generator.next() > future
