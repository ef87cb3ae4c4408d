"""The key directory: creation modes, permission checks, rotation, derived keys, CLI."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto import NoteVerifier
from gateway.errors import KeyStoreError
from gateway.keys import (
    KeyKind,
    KeyRing,
    ensure_store_key,
    ensure_webhook_key,
    init_keys,
    rotate_keys,
)
from gateway.tlog.note import open_note, sign_note


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_directory_and_files(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ring = init_keys(tmp_path / "keys")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "keys") == 0o700
    files = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert files == [
        "audit-hmac.0001.key",
        "audit-signing.0001.key",
        "pseudonym.0001.key",
        "store.0001.key",
        "webhook.0001.key",
    ]
    assert all(_mode(tmp_path / "keys" / f) == 0o600 for f in files)
    assert all(ring.generation(k) == 1 for k in KeyKind)


def test_init_refuses_an_initialised_directory(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="already holds keys"):
        init_keys(tmp_path / "k")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_load_refuses_a_group_or_world_readable_key_file(tmp_path: Path, mode: int) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "audit-hmac.0001.key").chmod(mode)
    with pytest.raises(KeyStoreError, match=r"audit-hmac\.0001\.key: key file is accessible"):
        KeyRing.load(tmp_path / "k")


def test_load_refuses_an_open_directory(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k").chmod(0o755)
    with pytest.raises(KeyStoreError, match="directory is accessible"):
        KeyRing.load(tmp_path / "k")


def test_load_refuses_missing_malformed_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="not readable"):
        KeyRing.load(tmp_path / "absent")
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "pseudonym.0001.key").write_text("not base64 at all!\n")
    with pytest.raises(KeyStoreError, match="malformed key file"):
        KeyRing.load(tmp_path / "k")
    (tmp_path / "k" / "pseudonym.0001.key").unlink()
    with pytest.raises(KeyStoreError, match="no pseudonym key"):
        KeyRing.load(tmp_path / "k")


def test_errors_and_repr_never_show_secrets(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    secret = (tmp_path / "k" / "audit-hmac.0001.key").read_text().strip()
    assert secret not in repr(ring)
    (tmp_path / "k" / "audit-hmac.0001.key").chmod(0o644)
    with pytest.raises(KeyStoreError) as info:
        KeyRing.load(tmp_path / "k")
    assert secret not in str(info.value)


def test_pseudonym_keys_are_hkdf_per_subscriber(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    master = __import__("base64").b64decode((tmp_path / "k" / "pseudonym.0001.key").read_text())
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pseudonym:platform-a"
    ).derive(master)
    assert ring.pseudonym_key("platform-a") == expected
    assert ring.pseudonym_key("platform-a") != ring.pseudonym_key("platform-b")
    assert len(ring.pseudonym_key("platform-b")) == 32


def test_vehicle_ref_is_a_keyed_hash_not_the_vin(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    key = __import__("base64").b64decode((tmp_path / "k" / "audit-hmac.0001.key").read_text())
    vin = "LSVAU2180N2183294"
    ref = ring.vehicle_ref(vin)
    assert ref == "k1:" + hmac.new(key, b"vehicle:" + vin.encode(), hashlib.sha256).hexdigest()[:32]
    assert vin not in ref
    assert ring.vehicle_ref(" lsvau2180n2183294 ") == ref
    assert ring.vehicle_ref("LSVAU2180N2183295") != ref
    other = init_keys(tmp_path / "other")
    assert other.vehicle_ref(vin) != ref


def test_rotation_adds_generations_and_keeps_old_ones(tmp_path: Path) -> None:
    ring1 = init_keys(tmp_path / "k")
    ref1 = ring1.vehicle_ref("VIN1")
    pseudo1 = ring1.pseudonym_key("s")
    vkey1 = ring1.verifier_keys("log.example/a")
    ring2 = rotate_keys(tmp_path / "k", [KeyKind.SIGNING, KeyKind.HMAC])
    assert ring2.generation(KeyKind.SIGNING) == 2
    assert ring2.generation(KeyKind.HMAC) == 2
    assert ring2.generation(KeyKind.PSEUDONYM) == 1
    assert ring2.pseudonym_key("s") == pseudo1
    assert ring2.vehicle_ref("VIN1").startswith("k2:")
    assert ring2.vehicle_refs("VIN1") == [ref1, ring2.vehicle_ref("VIN1")]
    assert ring2.verifier_keys("log.example/a")[0] == vkey1[0]
    assert len(ring2.verifier_keys("log.example/a")) == 2
    assert _mode(tmp_path / "k" / "audit-signing.0002.key") == 0o600
    ring3 = rotate_keys(tmp_path / "k")
    assert [ring3.generation(k) for k in KeyKind] == [3, 3, 2, 2, 2]


def test_signer_and_published_verifier_agree(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    signer = ring.note_signer("log.example/a")
    note = sign_note("log.example/a\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", [signer])
    verifier = NoteVerifier.from_vkey(ring.verifier_keys("log.example/a")[0])
    assert open_note(note, [verifier]).sigs[0].name == "log.example/a"


def test_sealed_values_open_only_for_their_row(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    a = ring.seal(b"LSVAU2180N2183294 31.2304", b"vehicle_state\x1fk1:ab")
    b = ring.seal(b"LSVAU2180N2183294 31.2304", b"vehicle_state\x1fk1:ab")
    assert b"LSVAU2180N2183294" not in a and a[2:14] != b[2:14]  # a nonce per value
    assert ring.unseal(a, b"vehicle_state\x1fk1:ab") == b"LSVAU2180N2183294 31.2304"
    with pytest.raises(KeyStoreError, match="does not authenticate"):
        ring.unseal(a, b"vehicle_state\x1fk1:cd")  # copied to another row
    with pytest.raises(KeyStoreError, match="does not authenticate"):
        ring.unseal(a[:-1] + bytes([a[-1] ^ 1]), b"vehicle_state\x1fk1:ab")


def test_a_forked_process_never_repeats_a_nonce_of_its_parent(tmp_path: Path) -> None:
    # A process forked after sealing (a pre-forking server, multiprocessing's default start
    # method on Linux) inherits the nonce prefix and counter: with the same store key both
    # would then seal with the same nonces, which breaks AES-GCM's confidentiality and lets
    # its authentication key be recovered.
    ring = init_keys(tmp_path / "k")
    ring.seal(b"before the fork", b"row")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next nonce and leave at once
        try:
            os.write(write, ring.seal(b"child", b"row")[2:14])
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    parent = ring.seal(b"parent", b"row")[2:14]
    assert len(child) == 12 and child != parent
    assert child[:8] != parent[:8]  # a fresh random prefix, not just another count


def test_store_key_rotation_keeps_old_values_readable(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    old = ring.seal(b"payload", b"row")
    new_ring = rotate_keys(tmp_path / "k", [KeyKind.STORE])
    new = new_ring.seal(b"payload", b"row")
    assert (KeyRing.sealed_generation(old), KeyRing.sealed_generation(new)) == (1, 2)
    assert new_ring.unseal(old, b"row") == new_ring.unseal(new, b"row") == b"payload"
    with pytest.raises(KeyStoreError, match="no store generation 2"):
        ring.unseal(new, b"row")
    assert _mode(tmp_path / "k" / "store.0002.key") == 0o600


def test_a_key_directory_without_a_store_key_gets_one(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "store.0001.key").unlink()  # made by a gateway before sealing
    ring = KeyRing.load(tmp_path / "k")
    assert ring.generations(KeyKind.STORE) == []
    with pytest.raises(KeyStoreError, match="no store key"):
        ring.seal(b"x", b"row")
    ring = ensure_store_key(tmp_path / "k")
    assert ring.generation(KeyKind.STORE) == 1
    assert ensure_store_key(tmp_path / "k").generations(KeyKind.STORE) == [1]
    assert _mode(tmp_path / "k" / "store.0001.key") == 0o600


def test_record_keys_are_keyed_digests(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "k")
    key = ring.record_key("m:LSVAU2180N2183294-17")
    assert key.startswith("r:") and len(key) == 34 and "LSV" not in key
    assert key == ring.record_key("m:LSVAU2180N2183294-17") != ring.record_key("m:x-17")
    other = init_keys(tmp_path / "other").record_key("m:LSVAU2180N2183294-17")
    assert other != key


def test_webhook_secrets_are_per_subscriber_and_per_generation(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "webhook.0001.key").unlink()  # made by a gateway before webhooks
    assert KeyRing.load(tmp_path / "k").generations(KeyKind.WEBHOOK) == []
    ring = ensure_webhook_key(tmp_path / "k")
    assert _mode(tmp_path / "k" / "webhook.0001.key") == 0o600
    a, b = ring.webhook_secret("a"), ring.webhook_secret("b")
    assert len(a) == 32 and a != b
    assert ensure_webhook_key(tmp_path / "k").webhook_secret("a") == a  # stable
    ring2 = rotate_keys(tmp_path / "k", [KeyKind.WEBHOOK])
    assert ring2.webhook_secret("a") != a
    assert ring2.webhook_secret("a", generation=1) == a
