"""The bounded backlog of stored answers waiting for their vector (application/index_backlog.py)."""

from __future__ import annotations

import pytest

from application.index_backlog import MAX_FAILURES, IndexBacklog, Unindexed
from tests.fakes import RecordingMetrics


def entry(name: str) -> Unindexed:
    return Unindexed(name, "scope", f"key-{name}", name, expires_at=1e12)


def names(entries: list[Unindexed]) -> list[str]:
    return [e.text for e in entries]


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


def test_only_a_full_backlog_drops_and_it_drops_the_oldest(metrics: RecordingMetrics) -> None:
    backlog = IndexBacklog(3, metrics)
    for name in "abc":
        backlog.add(entry(name))
    assert metrics.index_dropped == {}
    backlog.add(entry("d"))
    assert metrics.index_dropped == {"full": 1}
    assert names(backlog.take(10)) == ["b", "c", "d"]


def test_the_length_reported_counts_the_entries_being_indexed(metrics: RecordingMetrics) -> None:
    backlog = IndexBacklog(10, metrics)
    for name in "abc":
        backlog.add(entry(name))
    taken = backlog.take(2)
    backlog.add(entry("d"))
    assert (len(backlog), metrics.index_backlog) == (2, 4)
    backlog.settled(taken)
    assert metrics.index_backlog == 2


def test_entries_put_back_go_first_and_the_oldest_go_when_newer_filled_the_room(
    metrics: RecordingMetrics,
) -> None:
    backlog = IndexBacklog(3, metrics)
    for name in "abc":
        backlog.add(entry(name))
    taken = backlog.take(3)
    backlog.add(entry("d"))
    backlog.put_back(taken)
    backlog.settled(taken)
    assert metrics.index_dropped == {"full": 1}
    assert names(backlog.take(10)) == ["b", "c", "d"]


def test_an_entry_that_keeps_failing_is_given_up(metrics: RecordingMetrics) -> None:
    backlog = IndexBacklog(3, metrics)
    backlog.add(entry("a"))
    for attempt in range(1, MAX_FAILURES + 1):
        taken = backlog.take(1)
        assert names(taken) == ["a"]
        backlog.failed(taken)
        backlog.settled(taken)
        assert len(backlog) == (0 if attempt == MAX_FAILURES else 1)
    assert metrics.index_dropped == {"failed": 1}


def test_clearing_counts_what_it_drops_by_reason(metrics: RecordingMetrics) -> None:
    backlog = IndexBacklog(5, metrics)
    for name in "ab":
        backlog.add(entry(name))
    assert backlog.clear("shutdown") == 2
    assert metrics.index_dropped == {"shutdown": 2}
    assert metrics.index_backlog == 0


def test_a_backlog_holds_at_least_one_entry(metrics: RecordingMetrics) -> None:
    with pytest.raises(ValueError, match="at least one"):
        IndexBacklog(0, metrics)
