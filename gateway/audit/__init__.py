"""The tamper-evident audit log and the gateway's transactional store.

Modules, in the order data flows through them:

* :mod:`~gateway.audit.entries` — what is recorded (:class:`DecisionEntry`,
  :class:`AdminEntry`) and the exact bytes hashed (:mod:`~gateway.audit.canonical`,
  RFC 8785);
* :mod:`~gateway.audit.store` — ``open_store(url, shard=…)``; one ``transaction()`` per
  micro-batch covers audit entries, consents, cross-border counters (SQLite or PostgreSQL);
* :mod:`~gateway.audit.merkle` — RFC 6962 tree, compact range, proofs;
* :mod:`~gateway.audit.log` — :class:`AuditLog`: signed checkpoints
  (:mod:`~gateway.audit.checkpoint`, :mod:`~gateway.audit.note`), publication, rotation,
  retention;
* :mod:`~gateway.audit.verify`, :mod:`~gateway.audit.export`, :mod:`~gateway.audit.proof`,
  :mod:`~gateway.audit.query` — the auditor's side, driven by :mod:`~gateway.audit.cli`.

The signing keys are :mod:`gateway.crypto`'s; :mod:`gateway.keys` makes them from its seeds.
"""
