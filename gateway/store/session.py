"""The two ways in: a :class:`Reader` (one consistent snapshot) and a :class:`Transaction`
(everything done through it commits together or not at all).

Each is the sum of the tables' repositories (audit, checkpoints, consents, cross-border
counters); the service's working tables (:mod:`~gateway.store.outbox`,
:mod:`~gateway.store.deadletters`, :mod:`~gateway.store.dedup`,
:mod:`~gateway.store.vehicle_states`) are functions that take either.
"""

from __future__ import annotations

from gateway.store.audit import AuditReads, AuditWrites
from gateway.store.checkpoints import CheckpointReads, CheckpointWrites
from gateway.store.consents import ConsentReads, ConsentWrites
from gateway.store.crossborder import CrossborderReads, CrossborderWrites


# The order of the bases is the one C3 can linearise: each repository's writes before its
# reads, consents (whose writes append to the audit log) before the audit tables.
class Reader(ConsentReads, AuditReads, CheckpointReads, CrossborderReads):
    """Read-only access inside one snapshot (a read transaction) of the store."""


class Transaction(Reader, ConsentWrites, AuditWrites, CheckpointWrites, CrossborderWrites):
    """A write transaction: everything done through it commits together or not at all."""
