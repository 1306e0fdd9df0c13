"""The pure helpers: quorum arithmetic, follower progress, the log view."""

from __future__ import annotations

import pytest

from neostore.raft import CompactedError, Entry, HardState, MemoryLogStore, UnavailableError
from neostore.raft.log import RaftLog
from neostore.raft.progress import Inflights, Progress, ProgressState
from neostore.raft.quorum import VoteResult, committed_index, majority, vote_result


@pytest.mark.parametrize(
    ("voters", "match", "expected"),
    [
        pytest.param({1}, {1: 5}, 5, id="single voter"),
        pytest.param({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3, id="3 voters: the median"),
        pytest.param({1, 2, 3}, {1: 5}, 0, id="3 voters, two unknown"),
        pytest.param({1, 2, 3, 4}, {1: 9, 2: 7, 3: 5, 4: 3}, 5, id="4 voters need 3"),
        pytest.param({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 1, 4: 1, 5: 9}, 9, id="5 voters, 3 at 9"),
        pytest.param({2, 3}, {1: 100, 2: 4, 3: 6}, 4, id="non-voters do not count"),
        pytest.param(set(), {1: 5}, 0, id="no voters commit nothing"),
    ],
)
def test_committed_index_is_the_largest_index_a_majority_stored(
    voters: set[int], match: dict[int, int], expected: int
) -> None:
    assert committed_index(voters, match) == expected


@pytest.mark.parametrize(
    ("voters", "votes", "expected"),
    [
        pytest.param({1, 2, 3}, {1: True}, VoteResult.PENDING, id="1 of 3"),
        pytest.param({1, 2, 3}, {1: True, 2: True}, VoteResult.WON, id="2 of 3"),
        pytest.param(
            {1, 2, 3}, {1: True, 2: False, 3: False}, VoteResult.LOST, id="2 rejects of 3"
        ),
        pytest.param({1, 2, 3, 4}, {1: True, 2: True}, VoteResult.PENDING, id="2 of 4"),
        pytest.param({1, 2, 3, 4}, {3: False, 4: False}, VoteResult.LOST, id="2 rejects of 4"),
        pytest.param({1, 2, 3}, {1: True, 7: True}, VoteResult.PENDING, id="non-voter ignored"),
    ],
)
def test_vote_result(voters: set[int], votes: dict[int, bool], expected: VoteResult) -> None:
    assert vote_result(voters, votes) is expected


def test_majority_sizes() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_inflights_window_by_count_and_bytes() -> None:
    inflights = Inflights(capacity=3, max_bytes=100)
    inflights.add(5, 10)
    inflights.add(7, 10)
    assert not inflights.full()
    inflights.add(9, 90)
    assert inflights.full()
    inflights.free_le(7)
    assert inflights.count() == 1 and inflights.bytes == 90
    assert not inflights.full()
    with pytest.raises(ValueError):
        inflights.add(8, 1)


def test_progress_probe_sends_one_append_at_a_time() -> None:
    progress = Progress(next_index=10, max_inflight=8)
    assert progress.state is ProgressState.PROBE and not progress.is_paused()
    progress.sent_append(12, 3, 30)
    assert progress.is_paused()
    assert progress.maybe_update(12)
    assert not progress.is_paused() and progress.next == 13


def test_progress_replicate_is_optimistic_within_its_window() -> None:
    progress = Progress(next_index=10, max_inflight=2)
    progress.maybe_update(9)
    progress.become_replicate()
    progress.sent_append(11, 2, 20)
    progress.sent_append(13, 2, 20)
    assert progress.next == 14 and progress.is_paused()
    progress.maybe_update(11)
    progress.inflights.free_le(11)
    assert not progress.is_paused()


@pytest.mark.parametrize(
    ("state", "next_index", "match", "rejected", "hint", "expected_next", "accepted"),
    [
        pytest.param(ProgressState.PROBE, 10, 0, 9, 4, 5, True, id="probe: jump to the hint"),
        pytest.param(ProgressState.PROBE, 10, 0, 7, 4, 10, False, id="probe: stale rejection"),
        pytest.param(ProgressState.PROBE, 10, 6, 9, 2, 7, True, id="probe: never below match+1"),
        pytest.param(
            ProgressState.REPLICATE, 20, 8, 15, 3, 9, True, id="replicate: back to match+1"
        ),
        pytest.param(ProgressState.REPLICATE, 20, 8, 8, 3, 20, False, id="replicate: stale"),
    ],
)
def test_progress_moves_next_back_on_rejection(
    state: ProgressState,
    next_index: int,
    match: int,
    rejected: int,
    hint: int,
    expected_next: int,
    accepted: bool,
) -> None:
    progress = Progress(next_index=next_index, max_inflight=4)
    progress.match = match
    progress.state = state
    assert progress.maybe_decrease_to(rejected, hint) is accepted
    assert progress.next == expected_next


def _log(*terms: int, committed: int = 0) -> RaftLog:
    store = MemoryLogStore()
    entries = [Entry(term, index) for index, term in enumerate(terms, start=1)]
    store.save(HardState(term=max(terms, default=0), commit=committed), entries)
    log = RaftLog(store)
    log.commit_to(committed)
    return log


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        pytest.param(8, 5, (6, 4), id="skips the entries of terms above 5"),
        pytest.param(8, 1, (2, 1), id="skips to the last entry of term 1"),
        pytest.param(3, 9, (3, 2), id="entry already low enough"),
        pytest.param(20, 9, (8, 6), id="beyond the end: the last entry"),
        pytest.param(8, 0, (0, 0), id="nothing matches"),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    log = _log(1, 1, 2, 3, 4, 4, 6, 6)
    assert log.find_conflict_by_term(index, term) == expected


def test_maybe_append_truncates_only_a_conflicting_suffix() -> None:
    log = _log(1, 1, 2, 2)
    result = log.maybe_append(2, 1, 0, [Entry(1, 3), Entry(3, 4), Entry(3, 5)])
    assert result == (5, 3)
    assert [e.term for e in log.all_entries()] == [1, 1, 1, 3, 3]
    assert log.unstable.offset == 3
    assert log.maybe_append(9, 3, 0, [Entry(3, 10)]) is None


def test_maybe_append_never_rewrites_committed_entries() -> None:
    log = _log(1, 1, 2, committed=3)
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, [Entry(3, 2)])


def test_log_reads_stable_and_unstable_entries_as_one() -> None:
    log = _log(1, 1, 2)
    log.append([Entry(3, 4), Entry(3, 5)])
    assert [e.index for e in log.slice(2, 6)] == [2, 3, 4, 5]
    assert log.term(5) == 3 and log.term(3) == 2
    with pytest.raises(UnavailableError):
        log.term(6)
    log.stable_to(5, 3)
    assert log.unstable.entries == [] and log.unstable.offset == 6


def test_log_below_the_first_index_is_compacted() -> None:
    store = MemoryLogStore()
    store.save(HardState(term=2, commit=6), [Entry(2, index) for index in range(1, 7)])
    store.create_snapshot(4, store.snapshot().metadata.conf_state, b"")
    store.compact(4)
    log = RaftLog(store)
    assert log.first_index() == 5 and log.term(4) == 2
    with pytest.raises(CompactedError):
        log.term(3)
    with pytest.raises(CompactedError):
        log.slice(3, 6)
