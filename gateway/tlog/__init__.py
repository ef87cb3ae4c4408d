"""The audit log's formats, with no storage: what an offline verifier needs.

* :mod:`~gateway.tlog.entries` — what is recorded (:class:`DecisionEntry`,
  :class:`AdminEntry`) and the exact bytes hashed (:mod:`~gateway.tlog.canonical`,
  RFC 8785);
* :mod:`~gateway.tlog.merkle` — RFC 6962 tree, compact range, proofs;
* :mod:`~gateway.tlog.checkpoint`, :mod:`~gateway.tlog.note` — signed checkpoints in the
  C2SP tlog-checkpoint / signed-note format.

:mod:`gateway.store` keeps entries and tree tiles in these formats; :mod:`gateway.audit`
appends, signs, verifies, exports and proves on top of the store.
"""
