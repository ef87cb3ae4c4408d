"""Signed notes (C2SP ``signed-note``), the format of Go's ``golang.org/x/mod/sumdb/note``.

A note is UTF-8 text ending in a newline, a blank line, then one line per signature::

    <text>\\n
    \\n
    — <key name> <base64(4-byte key hash || Ed25519 signature)>\\n

The keys that sign and verify are :mod:`gateway.crypto`'s. Third-party verifiers (Go's note
package, sigsum, transparency-dev tools) read what this module writes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.crypto import NoteSigner, NoteVerifier, b64decode_strict, is_valid_name
from gateway.errors import VerificationError

__all__ = [
    "Note",
    "Signature",
    "open_note",
    "read_verifier_keys",
    "sign_note",
]

SIG_PREFIX = "— "
MAX_SIGNATURES = 100


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line: key name, key hash and the base64 as written."""

    name: str
    key_hash: int
    base64: str

    @property
    def key_id(self) -> str:
        """``name+hash``."""
        return f"{self.name}+{self.key_hash:08x}"


@dataclass(frozen=True, slots=True)
class Note:
    """An opened note: its text, the signatures verified, and those by unknown keys."""

    text: str
    sigs: tuple[Signature, ...]
    unverified: tuple[Signature, ...] = ()


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` with every signer; the output is a complete signed note.

    The text must be valid for a note: ending in a newline, no blank line, no control
    characters other than newline.
    """
    _check_text(text)
    if not signers:
        raise VerificationError("a note needs at least one signer")
    lines = [text, "\n"]
    data = text.encode()
    for signer in signers:
        sig = signer.key_hash.to_bytes(4, "big") + signer.sign(data)
        lines.append(f"{SIG_PREFIX}{signer.name} {base64.b64encode(sig).decode()}\n")
    return "".join(lines).encode()


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text:
        raise VerificationError("malformed note")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise VerificationError("malformed note")


def open_note(message: bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse a signed note and check its signatures, with Go's ``note.Open`` rules.

    A signature by a known key (name and hash match a verifier) must verify, else the note is
    rejected; signatures by unknown keys are kept as unverified. At least one known key must
    have signed. Raises :class:`VerificationError` naming the problem.
    """
    known: dict[tuple[str, int], list[NoteVerifier]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_hash), []).append(v)
    try:
        msg = message.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise VerificationError("malformed note") from exc
    if any(ord(c) < 0x20 and c != "\n" for c in msg):
        raise VerificationError("malformed note")
    split = msg.rfind("\n\n")
    if split < 0:
        raise VerificationError("malformed note")
    text, sig_block = msg[: split + 1], msg[split + 2 :]
    if not sig_block or not sig_block.endswith("\n"):
        raise VerificationError("malformed note")
    data = text.encode()
    sigs: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError("malformed note")
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise VerificationError("malformed note")
        rest = line[len(SIG_PREFIX) :]
        name, _, b64 = rest.partition(" ")
        try:
            raw = b64decode_strict(b64)
        except ValueError as exc:
            raise VerificationError("malformed note") from exc
        if not is_valid_name(name) or not b64 or len(raw) < 5:
            raise VerificationError("malformed note")
        hash_ = int.from_bytes(raw[:4], "big")
        sig = Signature(name, hash_, b64)
        candidates = known.get((name, hash_))
        if not candidates:
            if rest not in seen_unverified:
                seen_unverified.add(rest)
                unverified.append(sig)
            continue
        if len(candidates) > 1 and len({c.public_key for c in candidates}) > 1:
            raise VerificationError(f"ambiguous key {sig.key_id}")
        if (name, hash_) in seen:
            continue
        seen.add((name, hash_))
        if not candidates[0].verify(data, raw[4:]):
            raise VerificationError(f"invalid signature for key {sig.key_id}")
        sigs.append(sig)
    if not sigs:
        raise VerificationError("note has no verifiable signatures")
    return Note(text=text, sigs=tuple(sigs), unverified=tuple(unverified))


def read_verifier_keys(text: str) -> list[NoteVerifier]:
    """Verifier keys from a file's text: one per line; blank lines and ``#`` comments skipped."""
    keys = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append(NoteVerifier.from_vkey(line))
    return keys
