"""Verification of audit shards, from a store or from an offline export.

For each shard the verifier:

1. opens every checkpoint with the auditor's public keys (key name = the shard's origin),
   requires sizes never to go back, and requires each checkpoint to share a signing key with
   the one before it (a key switch is only valid through a checkpoint signed by both);
2. streams the entries in order, recomputing every leaf hash from the entry bytes and the
   tree's right edge, and checks at each position that the bytes are canonical, that the
   entry's ``seq`` is its position, that its ``prev`` is the previous leaf hash, and (in a
   store) that the stored leaf hash, query columns and tree tiles agree;
3. compares the recomputed root with every checkpoint's root at its size (which also proves
   each checkpoint consistent with the one before it) and with any *trusted* checkpoint the
   auditor kept, so a log that was truncated or rewritten and re-signed still fails;
4. checks that entries whose bodies were pruned lie below a ``retention.pruned`` record.

The first failure stops the shard's check with a :class:`VerificationError` naming the first
bad sequence number. A pass reports the verified size and root (the newest checkpoint), how
many entries no checkpoint covers yet, and how many are pruned to hashes.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.crypto import NoteVerifier
from gateway.errors import AuditError, VerificationError
from gateway.store import Store
from gateway.store.audit import ShardState, StoredEntry
from gateway.tlog.canonical import parse_canonical
from gateway.tlog.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from gateway.tlog.entries import GENESIS_PREV, AdminAction, row_columns
from gateway.tlog.merkle import EMPTY_ROOT, HASH_SIZE, CompactRange, leaf_hash

PRUNED_KEY = "pruned_leaf_hash"
_TRUSTED = "the trusted checkpoint"

Row = tuple[int, bytes | None, bytes | None, tuple[Any, ...] | None]
"""(position, entry bytes or None if pruned, stored leaf hash or None, stored query columns
or None)."""


@dataclass
class ShardReport:
    """The outcome for one shard. ``error`` is None when it verified."""

    origin: str
    entries: int = 0
    verified_size: int = 0
    root: bytes = EMPTY_ROOT
    checkpoints: int = 0
    newest_checkpoint_size: int = 0
    pruned: int = 0
    trusted: list[int] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    error: VerificationError | None = None

    @property
    def uncovered(self) -> int:
        """Entries not yet covered by any checkpoint (after a failure: by the newest one
        the shard claims)."""
        covered = self.verified_size if self.error is None else self.newest_checkpoint_size
        return max(self.entries - covered, 0)

    @property
    def root_b64(self) -> str:
        """The verified root in base64, as checkpoints write it."""
        return base64.b64encode(self.root).decode()


def open_checkpoints(
    origin: str,
    notes: Sequence[bytes],
    verifiers: Sequence[NoteVerifier],
    report: ShardReport,
    *,
    prev: SignedCheckpoint | None = None,
    first: int = 1,
) -> list[SignedCheckpoint]:
    """Open a shard's checkpoints in order (``first`` is the number of the first, ``prev``
    the one opened before it): each signed by a trusted key, sizes never going back, each
    sharing a key with the one before. Raises :class:`VerificationError` at the first that
    fails; adds what it opened to ``report``."""
    opened: list[SignedCheckpoint] = []
    for i, note in enumerate(notes, start=first):
        first_unvouched = prev.checkpoint.size if prev else 0
        try:
            cp = open_checkpoint(note, verifiers, origin=origin)
        except VerificationError as exc:
            raise VerificationError(
                f"checkpoint #{i} is forged or not signed by a trusted key: {exc}",
                shard=origin,
                seq=first_unvouched,
            ) from exc
        if prev is not None:
            if cp.checkpoint.size < prev.checkpoint.size:
                raise VerificationError(
                    f"checkpoint #{i} (size {cp.checkpoint.size}) goes back from size "
                    f"{prev.checkpoint.size}",
                    shard=origin,
                    seq=cp.checkpoint.size,
                )
            if not set(cp.signed_by) & set(prev.signed_by):
                raise VerificationError(
                    f"checkpoint #{i} is signed by {', '.join(cp.signed_by)} but #{i - 1} by "
                    f"{', '.join(prev.signed_by)}: a key switch needs a checkpoint signed by both",
                    shard=origin,
                    seq=first_unvouched,
                )
        report.keys.update(cp.signed_by)
        report.newest_checkpoint_size = max(report.newest_checkpoint_size, cp.checkpoint.size)
        opened.append(cp)
        prev = cp
    report.checkpoints += len(opened)
    return opened


class ShardCheck:
    """One pass over a shard's entries in order: fed whole (:meth:`run`), or a chunk at a
    time (:meth:`feed`, then :meth:`finish` whenever the pass has reached the shard's end),
    with checkpoints added as they appear (:meth:`add_checkpoints`). Each failure raises
    :class:`VerificationError` naming the first bad sequence number."""

    def __init__(
        self,
        origin: str,
        checkpoints: Sequence[SignedCheckpoint],
        trusted: Sequence[SignedCheckpoint],
        tiles: dict[tuple[int, int], bytes] | None,
        report: ShardReport,
    ) -> None:
        self.origin = origin
        self.report = report
        self.tiles = tiles
        self.targets: dict[int, list[tuple[str, bytes]]] = {}
        self.checkpoint_sizes: set[int] = set()
        self.numbered = 0
        for cp in checkpoints:
            self._target(cp)
        for cp in trusted:
            self.targets.setdefault(cp.checkpoint.size, []).append((_TRUSTED, cp.checkpoint.root))
        self.trusted_sizes = {cp.checkpoint.size for cp in trusted}
        self.cr = CompactRange()
        self.prev: bytes | None = None
        self.expected = 0
        self.started = False
        self.last_matched = 0
        self.last_trusted = 0
        self.pruned_seqs: list[int] = []
        self.prune_bound = 0

    def _target(self, cp: SignedCheckpoint) -> None:
        self.numbered += 1
        size = cp.checkpoint.size
        self.targets.setdefault(size, []).append(
            (f"checkpoint #{self.numbered}", cp.checkpoint.root)
        )
        self.checkpoint_sizes.add(size)

    def add_checkpoints(self, checkpoints: Sequence[SignedCheckpoint]) -> bool:
        """Add checkpoints opened after the pass began (in order, after those it has). False,
        and nothing added, if one is below the entries already fed: its root can no longer be
        recomputed by this pass."""
        if any(cp.checkpoint.size < self.expected for cp in checkpoints):
            return False
        for cp in checkpoints:
            self._target(cp)
        if self.started:
            self._reach(self.expected)
        return True

    def fail(self, message: str, seq: int | None) -> VerificationError:
        return VerificationError(message, shard=self.origin, seq=seq)

    def _reach(self, size: int) -> None:
        wanted = self.targets.pop(size, None)
        if not wanted:
            return
        root = self.cr.root() if size else EMPTY_ROOT
        for label, expected in wanted:
            if expected != root:
                if label == _TRUSTED:
                    # Only an earlier trusted checkpoint vouches for a prefix: the operator
                    # may have re-signed everything else.
                    raise self.fail(
                        f"the log does not extend the trusted checkpoint (size {size}): its "
                        f"first {size} entries hash to a different root; the log was rewritten "
                        f"somewhere in entries {self.last_trusted}..{size - 1}",
                        self.last_trusted,
                    )
                raise self.fail(
                    f"{label} (size {size}) does not match the entries: entries "
                    f"{self.last_matched}..{size - 1} were altered",
                    self.last_matched,
                )
        self.last_matched = size
        if size in self.trusted_sizes:
            self.last_trusted = size
            self.report.trusted.append(size)
        if size in self.checkpoint_sizes:
            self.report.verified_size = size
            self.report.root = root

    def run(self, rows: Iterable[Row]) -> None:
        """Check every entry of the shard, from the first."""
        self.feed(rows)
        self.finish()

    def feed(self, rows: Iterable[Row]) -> None:
        """Check the next entries in order (the first call starts at entry 0)."""
        if not self.started:
            self.started = True
            self._reach(0)
        produced: list[tuple[int, int, bytes]] | None = [] if self.tiles is not None else None
        for seq, body, stored_leaf, columns in rows:
            expected = self.expected
            self.report.entries = max(self.report.entries, expected)
            if seq != expected:
                raise self.fail(f"entry {expected} is missing (next stored is {seq})", expected)
            if body is None:
                if stored_leaf is None or len(stored_leaf) != HASH_SIZE:
                    raise self.fail("entry has neither bytes nor a leaf hash", seq)
                h = stored_leaf
                self.pruned_seqs.append(seq)
            else:
                h = self._check_body(seq, body, stored_leaf, columns)
            self.cr.append(h, produced)
            if produced:
                self._check_tiles(produced)
                produced.clear()
            self.prev = h
            self.expected = expected + 1
            if self.expected in self.targets:
                self._reach(self.expected)

    def finish(self) -> None:
        """The checks that need the shard's end: no checkpoint covers more entries than were
        fed, and every entry pruned to its hash lies below a ``retention.pruned`` record."""
        if not self.started:
            self.feed(())
        expected = self.expected
        self.report.entries = expected
        self.report.pruned = len(self.pruned_seqs)
        beyond = sorted(s for s in self.targets if s > expected)
        if beyond:
            label = self.targets[beyond[0]][0][0]
            raise self.fail(
                f"{label} covers {beyond[0]} entries but only {expected} are present: entries "
                f"from {expected} on were deleted (the log was truncated)",
                expected,
            )
        first = bisect.bisect_left(self.pruned_seqs, self.prune_bound)  # in order: sorted
        if first < len(self.pruned_seqs):
            raise self.fail(
                "entry bytes are missing and no retention.pruned record covers them",
                self.pruned_seqs[first],
            )

    def _check_body(
        self, seq: int, body: bytes, stored_leaf: bytes | None, columns: tuple[Any, ...] | None
    ) -> bytes:
        try:
            obj = parse_canonical(body)
        except AuditError as exc:
            raise self.fail(f"entry is not valid canonical JSON: {exc}", seq) from exc
        if not isinstance(obj, dict):
            raise self.fail("entry is not a JSON object", seq)
        claimed = obj.get("seq")
        if claimed != seq:
            bad = min(claimed, seq) if type(claimed) is int and claimed >= 0 else seq
            raise self.fail(
                f"the entry at position {seq} says it is entry {claimed}: entries were "
                "reordered, inserted or deleted",
                bad,
            )
        want_prev = self.prev.hex() if self.prev is not None else GENESIS_PREV
        if obj.get("prev") != want_prev:
            raise self.fail(
                f"entry {seq} does not follow entry {seq - 1} (hash chain broken): entry "
                f"{seq - 1} was altered",
                max(seq - 1, 0),
            )
        h = leaf_hash(body)
        if stored_leaf is not None and stored_leaf != h:
            raise self.fail("entry bytes do not match their stored leaf hash: edited", seq)
        if columns is not None:
            try:
                derived = row_columns(obj)
            except (AuditError, KeyError, TypeError) as exc:
                raise self.fail(f"entry lacks required fields: {exc}", seq) from exc
            if tuple(columns) != derived:
                raise self.fail("stored query columns disagree with the entry bytes", seq)
        if obj.get("kind") == "admin" and obj.get("action") == AdminAction.RETENTION_PRUNED:
            details = obj.get("details")
            bound = details.get("before_seq") if isinstance(details, dict) else None
            if type(bound) is int and bound <= seq:
                self.prune_bound = max(self.prune_bound, bound)
        return h

    def _check_tiles(self, produced: list[tuple[int, int, bytes]]) -> None:
        assert self.tiles is not None
        for level, index, h in produced:
            stored = self.tiles.get((level, index))
            if stored != h:
                what = "missing" if stored is None else "wrong"
                raise self.fail(
                    f"stored tree tile (level {level}, index {index}) is {what}: inclusion "
                    "proofs from this store would fail",
                    index << level,
                )

    def check_head(self, state: ShardState) -> None:
        n = self.report.entries
        if state.size != n:
            raise self.fail(
                f"shard head says {state.size} entries, {n} are stored", min(n, state.size)
            )
        if state.edge != self.cr.to_bytes() or state.last_leaf != self.prev:
            raise self.fail("shard head (right edge) does not match the entries", max(n - 1, 0))


def verify_shard_rows(
    origin: str,
    rows: Iterable[Row],
    checkpoint_notes: Sequence[bytes],
    verifiers: Sequence[NoteVerifier],
    trusted_notes: Sequence[bytes] = (),
    *,
    tiles: dict[tuple[int, int], bytes] | None = None,
    state: ShardState | None = None,
) -> ShardReport:
    """Verify one shard given its rows in order; the report's ``error`` holds the first
    failure (None when everything checked out)."""
    report = ShardReport(origin, entries=state.size if state is not None else 0)
    for note in checkpoint_notes:  # what the shard claims, before anything is verified
        try:
            size = Checkpoint.parse(note.decode("utf-8").split("\n\n")[0] + "\n").size
        except (VerificationError, UnicodeDecodeError):
            continue
        report.newest_checkpoint_size = max(report.newest_checkpoint_size, size)
    try:
        cps = open_checkpoints(origin, checkpoint_notes, verifiers, report)
        trusted = []
        for note in trusted_notes:
            try:
                trusted.append(open_checkpoint(note, verifiers, origin=origin))
            except VerificationError as exc:
                raise VerificationError(
                    f"trusted checkpoint does not verify: {exc}", shard=origin
                ) from exc
        check = ShardCheck(origin, cps, trusted, tiles, report)
        check.run(rows)
        if state is not None:
            check.check_head(state)
    except VerificationError as exc:
        report.error = exc
    return report


def trusted_origin(note: bytes) -> str:
    """The origin named by a checkpoint note (not yet verified)."""
    text = note.decode("utf-8", errors="replace")
    return text.split("\n", 1)[0]


def stored_row(e: StoredEntry) -> Row:
    """A stored entry as the verifier reads it: bytes, stored leaf hash, query columns."""
    columns = (e.ts_ms, e.kind, e.subscriber, e.vehicle, e.decision, e.rules)
    return e.seq, e.body, e.leaf_hash, columns if e.body is not None else None


def verify_store(
    store: Store,
    verifiers: Sequence[NoteVerifier],
    trusted_notes: Sequence[bytes] = (),
    *,
    shards: Sequence[str] | None = None,
) -> list[ShardReport]:
    """Verify every shard of ``store`` (or those named) in one consistent snapshot.

    A trusted checkpoint whose origin has no shard in the store fails as a missing shard.
    """
    by_origin: dict[str, list[bytes]] = {}
    for note in trusted_notes:
        by_origin.setdefault(trusted_origin(note), []).append(note)
    reports = []
    with store.snapshot() as r:
        states = [s for s in r.shards() if shards is None or s.shard in shards]
        for st in states:
            rows = (stored_row(e) for e in r.iter_entries(st.shard))
            reports.append(
                verify_shard_rows(
                    st.shard,
                    rows,
                    [c.note for c in r.checkpoints(st.shard)],
                    verifiers,
                    by_origin.get(st.shard, []),
                    tiles=r.tiles(st.shard),
                    state=st,
                )
            )
    known = {st.shard for st in states}
    for origin in by_origin:
        if origin not in known:
            reports.append(
                ShardReport(
                    origin,
                    error=VerificationError(
                        "a trusted checkpoint names this shard but the store has no such "
                        "shard: it was deleted",
                        shard=origin,
                        seq=0,
                    ),
                )
            )
    return reports


def checkpoint_path(export: Path) -> Path:
    """Where the checkpoint beside an export lives: ``FILE.jsonl`` ->
    ``FILE.jsonl.checkpoint`` (the export's whole name, so two exports in one directory
    never share one). An export written before this naming, with ``FILE.checkpoint`` beside
    it and no ``FILE.jsonl.checkpoint``, is still read from there."""
    current = export.with_name(export.name + ".checkpoint")
    legacy = export.with_suffix(".checkpoint")
    if not current.exists() and export.suffix == ".jsonl" and legacy.exists():
        return legacy
    return current


def _export_rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        for pos, raw in enumerate(f):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.startswith(b'{"' + PRUNED_KEY.encode() + b'":'):
                try:
                    obj = parse_canonical(line)
                    leaf = bytes.fromhex(obj[PRUNED_KEY])
                except (AuditError, ValueError, TypeError, KeyError) as exc:
                    raise VerificationError(
                        f"line {pos + 1}: malformed pruned-entry line", seq=pos
                    ) from exc
                yield pos, None, leaf, None
            else:
                yield pos, line, None, None


def verify_export(
    path: Path, verifiers: Sequence[NoteVerifier], trusted_notes: Sequence[bytes] = ()
) -> ShardReport:
    """Verify an export (``FILE.jsonl`` with ``FILE.jsonl.checkpoint`` beside it) offline."""
    cp_path = checkpoint_path(path)
    try:
        note = cp_path.read_bytes()
        lines_exist = path.is_file()
    except OSError as exc:
        return ShardReport(
            str(path), error=VerificationError(f"{cp_path}: cannot read the checkpoint: {exc}")
        )
    try:
        origin = Checkpoint.parse(note.decode("utf-8").split("\n\n")[0] + "\n").origin
    except (VerificationError, UnicodeDecodeError) as exc:
        return ShardReport(str(path), error=VerificationError(f"{cp_path}: {exc}"))
    if not lines_exist:
        return ShardReport(origin, error=VerificationError(f"{path}: no such export"))
    relevant = [n for n in trusted_notes if trusted_origin(n) == origin]
    try:
        return verify_shard_rows(origin, _export_rows(path), [note], verifiers, relevant)
    except VerificationError as exc:
        return ShardReport(origin, error=VerificationError(str(exc), shard=origin, seq=exc.seq))
