"""The tamper-evident audit log (its storage is :mod:`gateway.store`).

Modules, in the order data flows through them:

* :mod:`~gateway.audit.entries` — what is recorded (:class:`DecisionEntry`,
  :class:`AdminEntry`) and the exact bytes hashed (:mod:`~gateway.audit.canonical`,
  RFC 8785);
* :mod:`~gateway.audit.merkle` — RFC 6962 tree, compact range, proofs;
* :mod:`~gateway.audit.log` — :class:`AuditLog`: signed checkpoints
  (:mod:`~gateway.audit.checkpoint`, :mod:`~gateway.audit.note`), publication, rotation,
  retention;
* :mod:`~gateway.audit.verify`, :mod:`~gateway.audit.export`, :mod:`~gateway.audit.proof`,
  :mod:`~gateway.audit.query` — the auditor's side, driven by :mod:`~gateway.audit.cli`.

Nothing is imported here, so ``gateway.keys`` (which uses the note format) and the audit
modules can import each other's leaves without a cycle.
"""
