"""Where subscribers last read their views over HTTP: SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.store import Store
from gateway.store.subscriber_reads import SubscriberRead, get_read, list_reads, record_read


def test_a_read_replaces_the_last_one_and_adds_its_views(store: Store) -> None:
    with store.snapshot() as rd:
        assert get_read(rd, "s1") is None
        assert list_reads(rd) == {}
    with store.transaction() as tx:
        record_read(tx, "s1", "c1", 1000, 5)
        record_read(tx, "s2", "d1", 1100, 1)
    with store.transaction() as tx:
        record_read(tx, "s1", "c2", 2000, 7)
    with store.snapshot() as rd:
        assert get_read(rd, "s1") == SubscriberRead("s1", "c2", 2000, 12)
        assert list_reads(rd) == {
            "s1": SubscriberRead("s1", "c2", 2000, 12),
            "s2": SubscriberRead("s2", "d1", 1100, 1),
        }
