"""The key directory: every secret the gateway holds, and nothing else holds them.

Layout (directory mode 0700, every file 0600)::

    audit-signing.0001.key   Ed25519 seed that signs audit checkpoints
    audit-hmac.0001.key      HMAC-SHA256 key: vehicle references and payload digests in the log
    pseudonym.0001.key       master secret; HKDF(master, info="pseudonym:" + subscriber) per
                             subscriber, so two subscribers' pseudonyms cannot be joined
    store.0001.key           AES-256-GCM key sealing the raw data the store must keep between
                             batches (trip starts, held and pending views, dead letters)
    webhook.0001.key         master secret of the webhook signatures; HMAC-SHA256(master,
                             "webhook:" + subscriber) is one subscriber's signing secret

Each file holds one line: the 32 secret bytes in base64. The number is the key's
*generation*: ``rotate`` adds generation N+1 beside the old ones, which stay readable so old
checkpoints, vehicle references and digests can still be checked. New work always uses the
newest generation. Loading refuses a directory or key file that the group or others can
access (:class:`gateway.errors.KeyStoreError`). Secrets never appear in reprs or errors.

Values the log stores name their generation: a vehicle reference is ``k<gen>:<32 hex>``,
a payload digest ``k<gen>:<64 hex>``; a sealed value starts with its store-key generation.
A key directory made before the store key existed gets generation 1 of it from
:func:`ensure_store_key` (the gateway calls it at start); one made before webhooks, its
webhook key from :func:`ensure_webhook_key` (the webhook sink and ``icvgw webhook secret``
call it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto import NoteSigner, NoteVerifier
from gateway.errors import KeyStoreError

__all__ = [
    "KeyKind",
    "KeyRing",
    "ensure_store_key",
    "ensure_webhook_key",
    "init_keys",
    "rotate_keys",
]

KEY_BYTES = 32
_FILE_RE = re.compile(r"^(audit-signing|audit-hmac|pseudonym|store|webhook)\.(\d{4,})\.key$")


class KeyKind(StrEnum):
    """The kinds of key material; the value is the file name prefix."""

    SIGNING = "audit-signing"
    HMAC = "audit-hmac"
    PSEUDONYM = "pseudonym"
    STORE = "store"
    WEBHOOK = "webhook"


_OPTIONAL = frozenset({KeyKind.STORE, KeyKind.WEBHOOK})
"""Kinds a key directory made by an older gateway may lack (see :func:`ensure_store_key`,
:func:`ensure_webhook_key`)."""


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_mode & 0o077:
        raise KeyStoreError(
            f"{path}: {what} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run chmod {'700' if what == 'directory' else '600'}"
        )


def _write_private(directory: Path, name: str, secret: bytes) -> None:
    """Create ``directory/name`` holding ``secret``, mode 0600, atomically, never replacing."""
    final = directory / name
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(secret) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, final)
    except FileExistsError as exc:
        raise KeyStoreError(f"{final}: already exists; another rotation ran at once?") from exc
    finally:
        tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keys(directory: str | Path) -> KeyRing:
    """Create a new key directory with generation 1 of every key and return its ring.

    The directory is created with mode 0700 (or must exist, be empty and private); each key
    file with mode 0600. Refuses a directory that already holds keys.
    """
    path = Path(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise KeyStoreError(f"{path}: cannot create the key directory: {exc.strerror}") from None
    path.chmod(0o700)
    if any(_FILE_RE.match(p.name) for p in path.iterdir()):
        raise KeyStoreError(f"{path}: already holds keys; use 'icvgw keys rotate' instead")
    for kind in KeyKind:
        _write_private(path, f"{kind.value}.0001.key", secrets.token_bytes(KEY_BYTES))
    _fsync_dir(path)
    return KeyRing.load(path)


def rotate_keys(directory: str | Path, kinds: Iterable[KeyKind] = tuple(KeyKind)) -> KeyRing:
    """Add the next generation of each of ``kinds``; older generations stay in place.

    Returns the reloaded ring, whose current generation of each rotated kind is the new one.
    """
    ring = KeyRing.load(directory)
    path = ring.directory
    for kind in dict.fromkeys(kinds):
        gen = max(ring.generations(kind), default=0) + 1
        _write_private(path, f"{kind.value}.{gen:04d}.key", secrets.token_bytes(KEY_BYTES))
    _fsync_dir(path)
    return KeyRing.load(path)


def _ensure(directory: str | Path, kind: KeyKind) -> KeyRing:
    ring = KeyRing.load(directory)
    if ring.generations(kind):
        return ring
    try:
        return rotate_keys(ring.directory, [kind])
    except KeyStoreError:  # another process added it at the same moment
        return KeyRing.load(directory)


def ensure_store_key(directory: str | Path) -> KeyRing:
    """The ring of ``directory``, with generation 1 of the store key added if it has none
    (a key directory made before the store sealed its raw data)."""
    return _ensure(directory, KeyKind.STORE)


def ensure_webhook_key(directory: str | Path) -> KeyRing:
    """The ring of ``directory``, with generation 1 of the webhook key added if it has none
    (a key directory made before webhooks were signed)."""
    return _ensure(directory, KeyKind.WEBHOOK)


class _Nonces:
    """96-bit AES-GCM nonces, distinct for every value this process seals: a random 64-bit
    prefix and a 32-bit counter (a new prefix when it wraps). Random 96-bit nonces would
    be safe for only about 2**32 values per key, a few days at the gateway's rate.

    A forked child starts afresh (new prefix, count and lock): it would otherwise repeat
    its parent's nonces under the same key."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._prefix = secrets.token_bytes(8)
        self._count = 0

    def next(self) -> bytes:
        with self._lock:
            if self._count >= 1 << 32:
                self._prefix, self._count = secrets.token_bytes(8), 0
            n = self._count
            self._count += 1
            return self._prefix + n.to_bytes(4, "big")


_NONCES = _Nonces()
os.register_at_fork(after_in_child=_NONCES._reset)


@functools.lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


@functools.lru_cache(maxsize=16)
def _record_mac(key: bytes) -> hmac.HMAC:
    return hmac.new(key, b"record:", hashlib.sha256)


@functools.lru_cache(maxsize=8192)
def _record_digest(key: bytes, record: str) -> str:
    # Cached: a batch's records are looked up, then remembered, with the same keys.
    mac = _record_mac(key).copy()
    mac.update(record.encode())
    return "r:" + mac.hexdigest()[:32]


_SEAL_HEAD = struct.Struct(">H")
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True, repr=False)
class KeyRing:
    """Every generation of every key in one key directory. Immutable; reload to see changes."""

    directory: Path
    _keys: Mapping[KeyKind, Mapping[int, bytes]]

    def __repr__(self) -> str:
        gens = ", ".join(f"{k.value}={max(self._keys[k], default=0)}" for k in KeyKind)
        return f"KeyRing({str(self.directory)!r}, current: {gens})"

    @classmethod
    def load(cls, directory: str | Path) -> KeyRing:
        """Read the key directory, checking that it and every key file are owner-only.

        Raises :class:`KeyStoreError` if the directory is missing, too open, lacks a kind of
        key, or a key file is unreadable, malformed or too open.
        """
        path = Path(directory)
        try:
            st = path.stat()
        except OSError as exc:
            raise KeyStoreError(f"{path}: key directory not readable: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"{path}: not a directory")
        _check_private(path, st, "directory")
        keys: dict[KeyKind, dict[int, bytes]] = {kind: {} for kind in KeyKind}
        for entry in sorted(path.iterdir()):
            match = _FILE_RE.match(entry.name)
            if not match:
                continue
            keys[KeyKind(match.group(1))][int(match.group(2))] = _read_key(entry)
        for kind, gens in keys.items():
            if not gens and kind not in _OPTIONAL:
                raise KeyStoreError(f"{path}: no {kind.value} key; run 'icvgw keys init'")
        frozen = {k: MappingProxyType(dict(v)) for k, v in keys.items()}
        return cls(path, MappingProxyType(frozen))

    def generation(self, kind: KeyKind) -> int:
        """The newest generation of ``kind``: the one new work uses."""
        gens = self._keys[kind]
        if not gens:
            raise KeyStoreError(f"{self.directory}: no {kind.value} key; run 'icvgw keys rotate'")
        return max(gens)

    def generations(self, kind: KeyKind) -> list[int]:
        """Every generation of ``kind`` present, oldest first."""
        return sorted(self._keys[kind])

    def _secret(self, kind: KeyKind, generation: int | None) -> tuple[int, bytes]:
        gen = self.generation(kind) if generation is None else generation
        try:
            return gen, self._keys[kind][gen]
        except KeyError:
            raise KeyStoreError(f"{self.directory}: no {kind.value} generation {gen}") from None

    # pseudonyms -----------------------------------------------------------------------------

    def pseudonym_key(self, subscriber_id: str, *, generation: int | None = None) -> bytes:
        """A 32-byte key private to one subscriber: HKDF-SHA256(master, info="pseudonym:"+id).

        Different subscribers get unrelated keys, so pseudonyms made with them cannot be joined.
        """
        _, master = self._secret(KeyKind.PSEUDONYM, generation)
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"pseudonym:" + subscriber_id.encode(),
        )
        return hkdf.derive(master)

    # webhook signatures ---------------------------------------------------------------------

    def webhook_secret(self, subscriber_id: str, *, generation: int | None = None) -> bytes:
        """The 32-byte secret that signs ``subscriber_id``'s webhooks: HMAC-SHA256(webhook
        key, "webhook:" + id). Each subscriber has its own, so one platform's secret forges
        nothing for another; a new webhook key generation gives every subscriber a new one."""
        _, master = self._secret(KeyKind.WEBHOOK, generation)
        return hmac.new(master, b"webhook:" + subscriber_id.encode(), hashlib.sha256).digest()

    # audit references -----------------------------------------------------------------------

    def vehicle_ref(self, vin: str, *, generation: int | None = None) -> str:
        """The vehicle reference the audit log stores instead of the VIN: ``k<gen>:<hex>``.

        A keyed hash (HMAC-SHA256, 128 bits) of the trimmed, upper-cased VIN: stable for one
        key generation, not reversible without the audit key.
        """
        gen, key = self._secret(KeyKind.HMAC, generation)
        mac = hmac.new(key, b"vehicle:" + vin.strip().upper().encode(), hashlib.sha256)
        return f"k{gen}:{mac.hexdigest()[:32]}"

    def vehicle_refs(self, vin: str) -> list[str]:
        """The vehicle reference of ``vin`` under every HMAC generation (for look-ups)."""
        return [self.vehicle_ref(vin, generation=g) for g in self.generations(KeyKind.HMAC)]

    def payload_digest(self, data: bytes, *, generation: int | None = None) -> str:
        """The keyed digest of the exact bytes shared: ``k<gen>:<HMAC-SHA256 hex>``."""
        gen, key = self._secret(KeyKind.HMAC, generation)
        return f"k{gen}:{hmac.new(key, b'payload:' + data, hashlib.sha256).hexdigest()}"

    def record_key(self, record: str, *, generation: int | None = None) -> str:
        """The de-duplication key of a record id (``m:<ms>:<msg_id>``, ``t:<ms>``,
        :func:`gateway.pipeline.shape.record_part`): ``r:`` and a
        keyed digest (HMAC-SHA256, 128 bits), so the store never holds the id itself (a
        message id often embeds the VIN)."""
        _, key = self._secret(KeyKind.HMAC, generation)
        return _record_digest(key, record)

    # sealing (data at rest) -------------------------------------------------------------------

    def seal(self, data: bytes, aad: bytes) -> bytes:
        """``data`` encrypted and authenticated with the newest store key (AES-256-GCM):
        2-byte generation, 12-byte nonce (never reused), ciphertext and tag. ``aad`` binds
        the value to the row that holds it (it must be given again to open it)."""
        gen, key = self._secret(KeyKind.STORE, None)
        nonce = _NONCES.next()
        return _SEAL_HEAD.pack(gen) + nonce + _aead(key).encrypt(nonce, data, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`. Raises :class:`KeyStoreError` if the value's key
        generation is not in the directory, or the value or ``aad`` is not the sealed one."""
        if len(blob) < _SEAL_HEAD.size + NONCE_BYTES + 16:
            raise KeyStoreError("sealed value too short")
        (gen,) = _SEAL_HEAD.unpack_from(blob)
        _, key = self._secret(KeyKind.STORE, gen)
        start = _SEAL_HEAD.size
        nonce = blob[start : start + NONCE_BYTES]
        try:
            return _aead(key).decrypt(nonce, blob[start + NONCE_BYTES :], aad)
        except InvalidTag:
            raise KeyStoreError(
                f"a sealed value (store key {gen}) does not authenticate for its row"
            ) from None

    @staticmethod
    def sealed_generation(blob: bytes) -> int:
        """The store-key generation a sealed value was made with."""
        return int(_SEAL_HEAD.unpack_from(blob)[0])

    # checkpoint signing ---------------------------------------------------------------------

    def note_signer(self, origin: str, *, generation: int | None = None) -> NoteSigner:
        """The checkpoint signer for log ``origin`` (the key name equals the origin)."""
        _, seed = self._secret(KeyKind.SIGNING, generation)
        return NoteSigner.from_seed(origin, seed)

    def note_signers(self, origin: str) -> dict[int, NoteSigner]:
        """The signer of every signing generation for ``origin``, by generation."""
        return {
            g: self.note_signer(origin, generation=g) for g in self.generations(KeyKind.SIGNING)
        }

    def verifier_keys(self, origin: str) -> list[str]:
        """The public verifier keys (``name+hash+key``) of every signing generation for
        ``origin``, oldest first: what an auditor needs to check every checkpoint."""
        return [s.verifier().vkey for s in self.note_signers(origin).values()]

    def verifiers(self, origin: str) -> list[NoteVerifier]:
        """Verifiers for every signing generation of ``origin``."""
        return [s.verifier() for s in self.note_signers(origin).values()]


def _read_key(path: Path) -> bytes:
    try:
        st = path.stat()
        _check_private(path, st, "key file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"{path}: not a regular file")
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"{path}: not readable: {exc.strerror}") from exc
    try:
        secret = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise KeyStoreError(f"{path}: malformed key file (expected {KEY_BYTES} bytes in base64)")
    return secret
