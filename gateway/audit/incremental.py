"""Verification that keeps up with a growing log at a bounded cost per step.

``icvgw audit verify`` reads every entry of every shard; a service answering auditors
cannot do that per request. :class:`IncrementalVerifier` keeps, per shard, a pass of
:class:`~gateway.audit.verify.ShardCheck` — the same checks, fed a chunk at a time — with
its position, right edge and the checkpoints it has opened, and each :meth:`step` checks at
most ``budget`` items (entries and checkpoints) over all shards:

* the *current* pass reaches the shard's head and then follows it, new entries and new
  checkpoints as they come;
* a checkpoint newer than the current pass is checked at once for consistency with the last
  checkpoint the pass verified, by a consistency proof from the store's tree tiles (a few
  hundred hashes): a log rewritten and re-signed fails before the pass reaches it;
* once the current pass is at the head, the budget left starts a *re-check* from entry 0,
  which replaces the current pass when it reaches the head: an entry altered behind the
  current pass is found within one cycle (the shard's size over the budget, in steps).

A failure is kept (``ok`` false, with the first bad sequence number) until a new pass from
entry 0 reaches the head without one. :meth:`status` returns the last step's result, and
steps again only when it is older than ``min_interval_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.audit.verify import ShardCheck, ShardReport, open_checkpoints, stored_row
from gateway.crypto import NoteVerifier
from gateway.errors import StoreError, VerificationError
from gateway.store import Reader, Store
from gateway.store.audit import ShardState
from gateway.tlog.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from gateway.tlog.merkle import consistency_proof, verify_consistency

__all__ = ["IncrementalVerifier", "ShardStatus", "VerifyStatus"]

DEFAULT_BUDGET = 5_000
"""Entries and checkpoints checked per step (bench/RESULTS.md times a step)."""


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """Where the verification of one shard stands after a step.

    ``verified_size`` and ``root`` are those of the newest checkpoint whose root the current
    pass recomputed from the entries; ``checked`` how many entries that pass has checked;
    ``complete`` that it has reached the shard's head (``head`` entries) with every
    checkpoint opened; ``full_pass_at`` when a pass from entry 0 last reached the head.
    """

    origin: str
    ok: bool
    complete: bool
    verified_size: int
    root: bytes
    checked: int
    head: int
    newest_checkpoint_size: int
    rechecked: int | None
    full_pass_at: float | None
    error: str | None = None
    error_seq: int | None = None


@dataclass(frozen=True, slots=True)
class VerifyStatus:
    """The result of the last step: when it ran, what it checked, each shard's status."""

    at: float
    items: int
    budget: int
    shards: tuple[ShardStatus, ...]

    @property
    def ok(self) -> bool:
        """No shard has failed."""
        return all(s.ok for s in self.shards)

    @property
    def complete(self) -> bool:
        """Every shard is verified up to its head."""
        return all(s.complete for s in self.shards)


class _Restart(Exception):
    """The pass can no longer check what it was given: start a new one from entry 0."""


@dataclass
class _Pass:
    check: ShardCheck
    report: ShardReport
    opened: int = 0  # ordinal of the last checkpoint opened
    last: SignedCheckpoint | None = None
    at_head: bool = False


def _new_pass(origin: str, anchor: SignedCheckpoint | None) -> _Pass:
    """A pass from entry 0 that must also reach ``anchor``, the newest checkpoint an
    earlier pass verified (so a history truncated or rewritten and re-signed since fails)."""
    report = ShardReport(origin)
    trusted = () if anchor is None else (anchor,)
    return _Pass(ShardCheck(origin, (), trusted, {}, report), report)


@dataclass
class _Shard:
    origin: str
    current: _Pass
    recheck: _Pass | None = None
    anchor: SignedCheckpoint | None = None
    error: VerificationError | None = None
    head: int = 0
    newest: int = 0
    consistent: int = 0  # ordinal of the newest checkpoint proved consistent
    full_pass_at: float | None = None
    gone: bool = False


class IncrementalVerifier:
    """Verifies every shard of ``store`` a bounded step at a time (thread-safe).

    ``verifiers(origin)`` gives the public keys a shard's checkpoints must verify with.
    """

    def __init__(
        self,
        store: Store,
        verifiers: Callable[[str], Sequence[NoteVerifier]],
        *,
        budget: int = DEFAULT_BUDGET,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if budget < 1:
            raise ValueError("the budget is at least one item a step")
        self.store, self.verifiers, self.budget = store, verifiers, budget
        self.min_interval_s, self.clock = min_interval_s, clock
        self._shards: dict[str, _Shard] = {}
        self._turn = 0
        self._lock = threading.Lock()
        self._last: VerifyStatus | None = None

    def status(self) -> VerifyStatus:
        """The last step's result; a new step first if it is older than ``min_interval_s``
        (unless another thread is stepping: then the last result as it is)."""
        last = self._last
        if last is not None and self.clock() - last.at < self.min_interval_s:
            return last
        if not self._lock.acquire(blocking=last is None):
            assert last is not None
            return last
        try:
            return self._step()
        finally:
            self._lock.release()

    def step(self) -> VerifyStatus:
        """Check at most ``budget`` more items now."""
        with self._lock:
            return self._step()

    def _step(self) -> VerifyStatus:
        budget = self.budget
        with self.store.snapshot() as r:
            states = r.shards()
            present = {st.shard for st in states}
            for sh in self._shards.values():
                sh.gone = sh.origin not in present
            turn = self._turn % max(len(states), 1)
            self._turn += 1
            for st in states[turn:] + states[:turn]:  # each shard has the whole budget in turn
                if st.shard not in self._shards:
                    self._shards[st.shard] = _Shard(st.shard, _new_pass(st.shard, None))
                budget -= self._step_shard(r, self._shards[st.shard], st, budget)
        self._last = VerifyStatus(
            self.clock(),
            self.budget - budget,
            self.budget,
            tuple(self._status(self._shards[o]) for o in sorted(self._shards)),
        )
        return self._last

    def _step_shard(self, r: Reader, sh: _Shard, st: ShardState, budget: int) -> int:
        """Advance one shard; returns the items checked."""
        sh.head = st.size
        if budget <= 0:
            return 0
        used = 0
        try:
            used += self._check_newest(r, sh)
            used += self._advance(r, sh, sh.current, st, budget - used)
            self._anchor(sh)
            if sh.current.at_head and budget - used > 0:
                sh.recheck = sh.recheck or _new_pass(sh.origin, sh.anchor)
                used += self._advance(r, sh, sh.recheck, st, budget - used)
                if sh.recheck.at_head:
                    sh.current, sh.recheck = sh.recheck, None
        except VerificationError as exc:
            sh.error = exc
            sh.current, sh.recheck = _new_pass(sh.origin, sh.anchor), None
        except _Restart:
            sh.current, sh.recheck = _new_pass(sh.origin, sh.anchor), None
        return used

    @staticmethod
    def _anchor(sh: _Shard) -> None:
        """Remember the newest checkpoint the current pass verified."""
        report = sh.current.report
        if report.verified_size > (sh.anchor.checkpoint.size if sh.anchor else 0):
            cp = Checkpoint(sh.origin, report.verified_size, report.root)
            sh.anchor = SignedCheckpoint(cp, b"", ())

    def _check_newest(self, r: Reader, sh: _Shard) -> int:
        """Prove the shard's newest checkpoint, if new and beyond the current pass,
        consistent with the last checkpoint the pass verified; returns the items checked."""
        latest = r.latest_checkpoint(sh.origin)
        if latest is None:
            return 0
        sh.newest = max(sh.newest, latest.size)
        p = sh.current
        if latest.ordinal <= max(sh.consistent, p.opened):
            return 0
        old, old_root = p.report.verified_size, p.report.root
        try:
            signed = open_checkpoint(latest.note, self.verifiers(sh.origin), origin=sh.origin)
        except VerificationError as exc:
            raise VerificationError(
                f"checkpoint #{latest.ordinal} is forged or not signed by a trusted key: {exc}",
                shard=sh.origin,
                seq=old,
            ) from exc
        cp = signed.checkpoint
        try:
            proof = consistency_proof(
                old, cp.size, lambda level, index: r.perfect_hash(sh.origin, level, index)
            )
            verify_consistency(old, cp.size, old_root, cp.root, proof)
        except (StoreError, VerificationError) as exc:
            raise VerificationError(
                f"the newest checkpoint (size {cp.size}) does not extend the verified one "
                f"(size {old}): {exc}",
                shard=sh.origin,
                seq=old,
            ) from exc
        sh.consistent = latest.ordinal
        return 1

    def _advance(self, r: Reader, sh: _Shard, p: _Pass, st: ShardState, budget: int) -> int:
        """Open the pass's next checkpoints and check its next entries, at most ``budget``
        items; at the head, the checks that need the end. Returns the items checked."""
        if budget <= 0:
            return 0
        stored = r.checkpoints_after(sh.origin, p.opened, budget)
        if stored:
            cps = open_checkpoints(
                sh.origin,
                [c.note for c in stored],
                self.verifiers(sh.origin),
                p.report,
                prev=p.last,
                first=p.opened + 1,
            )
            if not p.check.add_checkpoints(cps):
                raise _Restart
            p.opened, p.last = stored[-1].ordinal, cps[-1]
        more_checkpoints = len(stored) == budget
        used = len(stored)
        start = p.check.expected
        if st.size < start:
            raise p.check.fail(
                f"the shard's head went back from {start} to {st.size} entries: the log was "
                "truncated",
                st.size,
            )
        stop = min(st.size, start + budget - used)
        if more_checkpoints:  # not past a checkpoint not yet opened
            stop = min(stop, p.last.checkpoint.size if p.last else 0)
        if stop > start:
            p.check.tiles = r.tiles_completed(sh.origin, start, stop)
            p.check.feed(stored_row(e) for e in r.iter_entries(sh.origin, start, stop))
            if p.check.expected < stop:
                raise p.check.fail(
                    f"entry {p.check.expected} is missing (the shard's head says {st.size})",
                    p.check.expected,
                )
            used += stop - start
        was_at_head = p.at_head
        p.at_head = p.check.expected == st.size and not more_checkpoints
        if p.at_head:
            p.check.finish()
            p.check.check_head(st)
            if not was_at_head:
                sh.error, sh.full_pass_at = None, self.clock()
        return used

    def _status(self, sh: _Shard) -> ShardStatus:
        p = sh.current
        error = sh.error
        if sh.gone:
            error = VerificationError("the shard is gone from the store", shard=sh.origin, seq=0)
        return ShardStatus(
            origin=sh.origin,
            ok=error is None,
            complete=error is None and p.at_head,
            verified_size=p.report.verified_size,
            root=p.report.root,
            checked=p.check.expected,
            head=sh.head,
            newest_checkpoint_size=sh.newest,
            rechecked=None if sh.recheck is None else sh.recheck.check.expected,
            full_pass_at=sh.full_pass_at,
            error=None if error is None else str(error),
            error_seq=None if error is None else error.seq,
        )
