"""The writer of one audit shard: appends in the caller's transaction, signed checkpoints
after commit, publication, retention.

::

    log = AuditLog.from_keyring(store, keyring, origin="icvgw.example.cn/audit/w1",
                                publisher=publish_retained)
    with log.transaction() as tx:        # one commit per micro-batch ...
        tx.append_audit(entries)
        tx.add_crossborder_subjects(...)
    # ... after which a checkpoint is written if N entries or T seconds are due
    log.close()                          # final checkpoint at shutdown

A checkpoint is written when at least ``every_entries`` entries or ``every_seconds`` seconds
have passed since the last one (call :meth:`AuditLog.checkpoint_if_due` from a timer to
honour T when idle), at :meth:`AuditLog.close`, and on demand. After a signing-key rotation
the next checkpoint is signed by the new key *and* by the key that signed the previous
checkpoint, and an ``key.rotated`` admin entry records the switch: a verifier holding the old
key sees the handover, and one holding both keys checks an unbroken chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.crypto import NoteSigner
from gateway.errors import AuditError
from gateway.keys import KeyKind, KeyRing
from gateway.store import Store, Transaction
from gateway.store.checkpoints import StoredCheckpoint
from gateway.tlog.checkpoint import Checkpoint, note_key_ids, sign_checkpoint
from gateway.tlog.entries import AdminAction, AdminEntry, to_ms

log = logging.getLogger(__name__)

Publisher = Callable[[str, bytes], None]
"""Called with (origin, signed checkpoint note) after each checkpoint is committed."""

RETENTION_MINIMUM_DAYS = 3 * 365 + 1
"""PIPL art. 56: processing records are kept at least 3 years (RULES.md §5), a leap day
included. Pruning refuses anything shorter."""
RETENTION_DEFAULT_DAYS = RETENTION_MINIMUM_DAYS
"""PIPL art. 56: processing records kept at least three years (one leap day included)."""


def retention_days(*, years: int = 0, months: int = 0) -> int:
    """Days that certainly cover ``years`` calendar years and ``months`` calendar months
    (a leap day per started four years, 31 days a month)."""
    return years * 365 + (years + 3) // 4 + months * 31


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When to write a checkpoint: every N entries or T seconds, whichever comes first."""

    every_entries: int = 10_000
    every_seconds: float = 60.0


class AuditLog:
    """Writes one shard's checkpoints; appends go through the store's transactions."""

    def __init__(
        self,
        store: Store,
        signers: Sequence[NoteSigner],
        *,
        origin: str | None = None,
        instance: str | None = None,
        policy: CheckpointPolicy | None = None,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``signers`` run oldest to newest generation; the last one signs new checkpoints,
        the older ones only co-sign the checkpoint at a key switch."""
        name = origin or store.shard
        if not name:
            raise AuditError("an audit log needs an origin (the store's shard)")
        if not signers:
            raise AuditError("an audit log needs a signing key")
        for s in signers:
            if s.name != name:
                raise AuditError(f"signer key named {s.name!r} cannot sign for {name!r}")
        self.store = store
        self.origin = name
        self.instance = instance or name
        self.signers = list(signers)
        self.policy = policy or CheckpointPolicy()
        self.publisher = publisher
        self.clock = clock
        self.publish_failures = 0

    @classmethod
    def from_keyring(
        cls,
        store: Store,
        keyring: KeyRing,
        *,
        origin: str | None = None,
        instance: str | None = None,
        policy: CheckpointPolicy | None = None,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AuditLog:
        """An audit log signing with every generation of the key ring's signing key."""
        name = origin or store.shard
        if not name:
            raise AuditError("an audit log needs an origin (the store's shard)")
        gens = keyring.generations(KeyKind.SIGNING)
        signers = [keyring.note_signer(name, generation=g) for g in gens]
        return cls(
            store,
            signers,
            origin=name,
            instance=instance,
            policy=policy,
            publisher=publisher,
            clock=clock,
        )

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A store transaction; after it commits, a checkpoint is written if one is due."""
        with self.store.transaction() as tx:
            yield tx
        self.checkpoint_if_due()

    def _due(self, size: int, latest: StoredCheckpoint | None, now_ms: int) -> bool:
        if latest is None:
            return size > 0
        if self.signers[-1].verifier().key_id not in note_key_ids(latest.note):
            return True
        if size <= latest.size:
            return False
        if size - latest.size >= self.policy.every_entries:
            return True
        return now_ms - latest.created_ms >= self.policy.every_seconds * 1000

    def checkpoint_if_due(self) -> bytes | None:
        """Write a checkpoint if N entries or T seconds are due (or a key switch is pending);
        returns the note written, if any."""
        with self.store.snapshot() as r:
            state = r.shard_state(self.origin)
            latest = r.latest_checkpoint(self.origin)
        size = state.size if state else 0
        if not self._due(size, latest, to_ms(self.clock())):
            return None
        return self.checkpoint()

    def checkpoint(self, *, force: bool = False) -> bytes | None:
        """Sign and store a checkpoint of the shard's current head, then publish it.

        Returns None if the latest checkpoint already covers the head with the current key
        (unless ``force``).
        """
        now = self.clock()
        current = self.signers[-1]
        with self.store.transaction() as tx:
            head = tx.audit_head(self.origin)
            latest = tx.latest_checkpoint(self.origin)
            previous_ids = note_key_ids(latest.note) if latest else ()
            switch = latest is not None and current.verifier().key_id not in previous_ids
            if not force and not switch and latest is not None and latest.size == head.size:
                return None
            signers = [current]
            if switch:
                old = [s for s in self.signers[:-1] if s.verifier().key_id in previous_ids]
                signers = old[-1:] + signers
                tx.append_audit(
                    [
                        AdminEntry(
                            time=now,
                            instance=self.instance,
                            action=AdminAction.KEY_ROTATED,
                            subject=current.verifier().key_id,
                            details={
                                "previous": list(previous_ids),
                                "signing_key": current.verifier().vkey,
                            },
                        )
                    ],
                    shard=self.origin,
                )
                head = tx.audit_head(self.origin)
            cp = Checkpoint(self.origin, head.size, head.root())
            note = sign_checkpoint(cp, signers)
            tx.add_checkpoint(self.origin, cp.size, note, to_ms(now))
        self._publish(note)
        return note

    def _publish(self, note: bytes) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher(self.origin, note)
        except Exception:
            # The checkpoint is committed; the next one is published again. Count, log, go on.
            self.publish_failures += 1
            log.exception("publishing checkpoint of %s failed", self.origin)

    def close(self) -> bytes | None:
        """The shutdown checkpoint: covers everything appended so far."""
        return self.checkpoint()

    def prune(self, *, retention_days: float = RETENTION_DEFAULT_DAYS) -> int:
        """Drop the bodies of entries older than the retention period that a checkpoint
        already covers, keeping their leaf hashes so the log still verifies. Records a
        ``retention.pruned`` admin entry naming the bound. Returns the number pruned.

        Raises :class:`AuditError` for a retention shorter than the legal minimum."""
        if not retention_days >= RETENTION_MINIMUM_DAYS:
            raise AuditError(
                f"refused: an audit retention of {retention_days:g} days is below the legal "
                f"minimum of {RETENTION_MINIMUM_DAYS} days (3 years, PIPL art. 56; RULES.md §5)"
            )
        now = self.clock()
        cutoff_ms = to_ms(now - retention_days * 86400)
        with self.store.transaction() as tx:
            head = tx.audit_head(self.origin)
            latest = tx.latest_checkpoint(self.origin)
            covered = latest.size if latest else 0
            bound = tx.first_seq_since(self.origin, cutoff_ms, covered)
            if bound <= head.pruned_before:
                return 0
            tx.append_audit(
                [
                    AdminEntry(
                        time=now,
                        instance=self.instance,
                        action=AdminAction.RETENTION_PRUNED,
                        subject=self.origin,
                        details={"before_seq": bound, "cutoff_ms": cutoff_ms},
                    )
                ],
                shard=self.origin,
            )
            count = tx.prune_bodies(self.origin, bound)
        self.checkpoint_if_due()
        return count
