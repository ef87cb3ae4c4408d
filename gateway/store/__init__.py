"""The transactional store: one database per gateway worker, one commit per micro-batch.

Everything that must change together lives in one database, so one commit covers it: the
audit log (entries, tree tiles, checkpoints, the shard's right edge), consents,
cross-border subject counters, the delivery outbox, dead letters, the de-duplication
window and per-vehicle decision state (vehicles kept as keyed references, raw data
sealed). Use::

    store = open_store(url, shard="icvgw.example.cn/audit/w1")
    with store.transaction() as tx:          # one commit for the whole micro-batch
        tx.append_audit(entries)
        tx.add_crossborder_subjects("platform-x", 2025, vehicle_refs, at=now)

A transaction re-reads the shard's state (size, last leaf, right edge) under its lock, so a
rolled-back transaction leaves nothing behind in memory either.

Modules:

* :mod:`~gateway.store.dialects` — :func:`open_store`; SQLite and PostgreSQL (connection,
  placeholders, pragmas, locks, reconnect) over :mod:`~gateway.store.connection` (the
  transaction discipline) and :mod:`~gateway.store.cursor` (what repositories run SQL with);
* :mod:`~gateway.store.schema` — numbered migrations (3 -> 4 in
  :mod:`~gateway.store.schema_v4`);
* one repository per table, the only module with that table's SQL:
  :mod:`~gateway.store.audit`, :mod:`~gateway.store.checkpoints`,
  :mod:`~gateway.store.consents`, :mod:`~gateway.store.crossborder` (methods of
  :class:`~gateway.store.session.Reader` and :class:`~gateway.store.session.Transaction`),
  :mod:`~gateway.store.outbox`, :mod:`~gateway.store.deadletters`,
  :mod:`~gateway.store.dedup`, :mod:`~gateway.store.vehicle_states` (functions of either);
* :mod:`~gateway.store.sealing` (data at rest), :mod:`~gateway.store.rekey` (re-sealing),
  :mod:`~gateway.store.forget` (erasure and retention across tables).
"""

from gateway.store.connection import Store
from gateway.store.dialects import open_store
from gateway.store.session import Reader, Transaction

__all__ = ["Reader", "Store", "Transaction", "open_store"]
