"""The tamper-evident audit log: appending, signing, verifying, exporting, proving.

Its formats (entries, canonical JSON, the Merkle tree, signed checkpoints) are
:mod:`gateway.tlog`'s; its storage is :mod:`gateway.store`.

* :mod:`~gateway.audit.log` — :class:`AuditLog`: signed checkpoints, publication, rotation,
  retention;
* :mod:`~gateway.audit.verify`, :mod:`~gateway.audit.export`, :mod:`~gateway.audit.proof`,
  :mod:`~gateway.audit.query` — the auditor's side, driven by :mod:`~gateway.cli.audit`.

The signing keys are :mod:`gateway.crypto`'s; :mod:`gateway.keys` makes them from its seeds.
"""
