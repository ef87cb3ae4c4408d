"""Ed25519 signer and verifier keys in the signed-note encoding (C2SP ``signed-note``).

The key directory (:mod:`gateway.keys`) makes them from its seeds; the audit log signs and
checks checkpoints with them (:mod:`gateway.tlog.note`). The key hash is the first four bytes
of SHA-256(name || "\\n" || 0x01 || public key). A verifier key is written
``<name>+<hash hex>+<base64(0x01 || public key)>``; a signer key
``PRIVATE+KEY+<name>+<hash hex>+<base64(0x01 || seed)>``, as Go's
``golang.org/x/mod/sumdb/note`` reads and writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import VerificationError

__all__ = ["NoteSigner", "NoteVerifier", "b64decode_strict", "is_valid_name", "key_hash"]

ALG_ED25519 = 1


def key_hash(name: str, key: bytes) -> int:
    """The 32-bit key id: first four bytes of SHA-256(name || "\\n" || key), big-endian.

    ``key`` is the encoded public key, i.e. the algorithm byte followed by the key bytes.
    """
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + key).digest()[:4], "big")


def is_valid_name(name: str) -> bool:
    """A key name is non-empty and has no whitespace and no ``+``."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def b64decode_strict(text: str) -> bytes:
    """Standard base64 with padding; anything else raises ``ValueError``."""
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
            key = b64decode_strict(key64)
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
            key = b64decode_strict(key64)
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
