"""Checkpoints in the C2SP ``tlog-checkpoint`` format, carried as signed notes.

A checkpoint body is::

    <origin>\\n
    <tree size, decimal>\\n
    <root hash, standard base64>\\n
    [extension lines]

and is signed as a C2SP signed note whose key name equals the origin. Each gateway worker's
log shard has its own origin, e.g. ``icvgw.example.cn/audit/worker-1``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.crypto import NoteSigner, NoteVerifier, is_valid_name
from gateway.errors import VerificationError
from gateway.tlog.merkle import HASH_SIZE
from gateway.tlog.note import Note, open_note, sign_note

_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One tree head: the log's origin, its size and its root hash."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint text that is signed."""
        lines = [self.origin, str(self.size), self.root_b64, *self.extensions]
        return "".join(line + "\n" for line in lines)

    @property
    def root_b64(self) -> str:
        """The root hash in base64, as the checkpoint writes it."""
        return base64.b64encode(self.root).decode()

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body; raises :class:`VerificationError` if malformed."""
        if not text.endswith("\n"):
            raise VerificationError("malformed checkpoint: no final newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise VerificationError("malformed checkpoint: fewer than three lines")
        origin, size_s, root_s, *ext = lines
        if not origin or not is_valid_name(origin):
            raise VerificationError(f"malformed checkpoint: bad origin {origin!r}")
        if not _SIZE_RE.match(size_s) or int(size_s) >= 2**64:
            raise VerificationError(f"malformed checkpoint: bad tree size {size_s!r}")
        try:
            root = base64.b64decode(root_s.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise VerificationError("malformed checkpoint: root is not base64") from exc
        if len(root) != HASH_SIZE:
            raise VerificationError("malformed checkpoint: root is not a SHA-256 hash")
        if any(not line for line in ext):
            raise VerificationError("malformed checkpoint: empty extension line")
        return cls(origin, int(size_s), root, tuple(ext))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> bytes:
    """The signed note of ``checkpoint``; every signer's key name must be the origin."""
    for s in signers:
        if s.name != checkpoint.origin:
            raise VerificationError(
                f"signer key {s.name!r} cannot sign for origin {checkpoint.origin!r}"
            )
    return sign_note(checkpoint.body(), signers)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A verified checkpoint with the note it came from and the key ids that signed it."""

    checkpoint: Checkpoint
    note: bytes
    signed_by: tuple[str, ...]


def open_checkpoint(
    note: bytes, verifiers: Iterable[NoteVerifier], *, origin: str | None = None
) -> SignedCheckpoint:
    """Check a signed checkpoint: only keys named like its origin count.

    Raises :class:`VerificationError` if the note is malformed, a known key's signature is
    bad, no key named after the origin signed it, or ``origin`` is given and differs.
    """
    text = _note_text(note)
    cp = Checkpoint.parse(text)
    if origin is not None and cp.origin != origin:
        raise VerificationError(f"checkpoint is for origin {cp.origin!r}, expected {origin!r}")
    opened: Note = open_note(note, [v for v in verifiers if v.name == cp.origin])
    return SignedCheckpoint(cp, note, tuple(s.key_id for s in opened.sigs))


def checkpoint_of(note: bytes) -> Checkpoint:
    """The checkpoint a signed note carries, its signatures not checked (see
    :func:`open_checkpoint`); raises :class:`VerificationError` if it is not one."""
    return Checkpoint.parse(_note_text(note))


def _note_text(note: bytes) -> str:
    try:
        msg = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError("malformed note") from exc
    split = msg.rfind("\n\n")
    if split < 0:
        raise VerificationError("malformed note")
    return msg[: split + 1]


def note_key_ids(note: bytes) -> tuple[str, ...]:
    """The ``name+hash`` of every signature line of a note, verified or not."""
    msg = note.decode("utf-8", errors="replace")
    split = msg.rfind("\n\n")
    ids = []
    for line in msg[split + 2 :].splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "—":
            try:
                raw = base64.b64decode(parts[2], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) >= 4:
                ids.append(f"{parts[1]}+{int.from_bytes(raw[:4], 'big'):08x}")
    return tuple(ids)
