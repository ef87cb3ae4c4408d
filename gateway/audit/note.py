"""Signed notes (C2SP ``signed-note``), the format of Go's ``golang.org/x/mod/sumdb/note``.

A note is UTF-8 text ending in a newline, a blank line, then one line per signature::

    <text>\\n
    \\n
    — <key name> <base64(4-byte key hash || Ed25519 signature)>\\n

The key hash is the first four bytes of SHA-256(name || "\\n" || 0x01 || public key). A
verifier key is written ``<name>+<hash hex>+<base64(0x01 || public key)>``; a signer key
``PRIVATE+KEY+<name>+<hash hex>+<base64(0x01 || seed)>``. Third-party verifiers (Go's note
package, sigsum, transparency-dev tools) read what this module writes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import VerificationError

ALG_ED25519 = 1
SIG_PREFIX = "— "
MAX_SIGNATURES = 100


def key_hash(name: str, key: bytes) -> int:
    """The 32-bit key id: first four bytes of SHA-256(name || "\\n" || key), big-endian.

    ``key`` is the encoded public key, i.e. the algorithm byte followed by the key bytes.
    """
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + key).digest()[:4], "big")


def is_valid_name(name: str) -> bool:
    """A key name is non-empty and has no whitespace and no ``+``."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError("invalid base64") from exc


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """An Ed25519 verifier key with its name and key hash."""

    name: str
    key_hash: int
    public_key: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hash+base64key``; the hash must match name and key exactly."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise VerificationError(f"malformed verifier key {vkey!r}")
        name, hash16, key64 = parts
        try:
            key = _b64decode(key64)
            hash_ = int(hash16, 16)
        except ValueError as exc:
            raise VerificationError(f"malformed verifier key {vkey!r}") from exc
        if len(hash16) != 8 or not is_valid_name(name) or not key:
            raise VerificationError(f"malformed verifier key {vkey!r}")
        if hash_ != key_hash(name, key):
            raise VerificationError(f"verifier key {vkey!r}: key hash does not match")
        if key[0] != ALG_ED25519 or len(key) != 33:
            raise VerificationError(f"verifier key {vkey!r}: not an Ed25519 key")
        return cls(name=name, key_hash=hash_, public_key=key[1:])

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        """The verifier for a raw 32-byte Ed25519 public key under ``name``."""
        if not is_valid_name(name):
            raise VerificationError(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise VerificationError("an Ed25519 public key has 32 bytes")
        return cls(name, key_hash(name, bytes([ALG_ED25519]) + public_key), public_key)

    @property
    def vkey(self) -> str:
        """The encoded verifier key, ``name+hash+base64key``."""
        key = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash:08x}+{key}"

    @property
    def key_id(self) -> str:
        """``name+hash``: how errors and reports name this key."""
        return f"{self.name}+{self.key_hash:08x}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True only if ``signature`` is a valid Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """An Ed25519 signer key. Its repr never shows the seed."""

    name: str
    key_hash: int
    _seed: bytes = field(repr=False)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> NoteSigner:
        """The signer for a 32-byte Ed25519 seed under ``name``."""
        if not is_valid_name(name):
            raise VerificationError(f"invalid key name {name!r}")
        if len(seed) != 32:
            raise VerificationError("an Ed25519 seed has 32 bytes")
        public = _public_from_seed(seed)
        return cls(name, key_hash(name, bytes([ALG_ED25519]) + public), seed)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+name+hash+base64seed``; the hash must match the derived key."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise VerificationError("malformed signer key")
        _, _, name, hash16, key64 = parts
        try:
            key = _b64decode(key64)
            hash_ = int(hash16, 16)
        except ValueError as exc:
            raise VerificationError("malformed signer key") from exc
        if len(hash16) != 8 or not is_valid_name(name) or len(key) != 33:
            raise VerificationError("malformed signer key")
        if key[0] != ALG_ED25519:
            raise VerificationError("signer key: unknown algorithm")
        signer = cls.from_seed(name, key[1:])
        if signer.key_hash != hash_:
            raise VerificationError("signer key: key hash does not match")
        return signer

    @property
    def skey(self) -> str:
        """The encoded signer key (secret: never log it)."""
        key = base64.b64encode(bytes([ALG_ED25519]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{key}"

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return _public_from_seed(self._seed)

    def verifier(self) -> NoteVerifier:
        """The matching verifier."""
        return NoteVerifier(self.name, self.key_hash, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return Ed25519PrivateKey.from_private_bytes(self._seed).sign(message)


def _public_from_seed(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


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
            raw = _b64decode(b64)
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
