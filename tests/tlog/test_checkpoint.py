"""C2SP tlog-checkpoint bodies, signed as notes with the log's origin as key name."""

from __future__ import annotations

import base64

import pytest

from gateway.crypto import NoteSigner
from gateway.errors import VerificationError
from gateway.tlog.checkpoint import Checkpoint, note_key_ids, open_checkpoint, sign_checkpoint
from gateway.tlog.merkle import EMPTY_ROOT

ORIGIN = "icvgw.test/audit/w1"
SIGNER = NoteSigner.from_seed(ORIGIN, bytes(range(32)))
OTHER = NoteSigner.from_seed(ORIGIN, bytes(range(1, 33)))


def test_body_is_origin_size_base64_root() -> None:
    cp = Checkpoint(ORIGIN, 42, EMPTY_ROOT)
    assert cp.body() == f"{ORIGIN}\n42\n{base64.b64encode(EMPTY_ROOT).decode()}\n"
    assert Checkpoint.parse(cp.body()) == cp
    with_ext = Checkpoint(ORIGIN, 1, EMPTY_ROOT, ("ext line",))
    assert Checkpoint.parse(with_ext.body()) == with_ext


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "o\n01\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n",
        "o\n-1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n",
        "o\n1\n" + base64.b64encode(b"short").decode() + "\n",
        "o\n1\nnot base64!\n",
        "bad origin\n1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n",
        "o\n1\n" + base64.b64encode(EMPTY_ROOT).decode(),
    ],
)
def test_malformed_bodies(text: str) -> None:
    with pytest.raises(VerificationError, match="malformed checkpoint"):
        Checkpoint.parse(text)


def test_sign_and_open() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, EMPTY_ROOT), [SIGNER])
    opened = open_checkpoint(note, [SIGNER.verifier()], origin=ORIGIN)
    assert opened.checkpoint.size == 7
    assert opened.signed_by == (SIGNER.verifier().key_id,)
    assert note_key_ids(note) == (SIGNER.verifier().key_id,)


def test_only_keys_named_after_the_origin_count() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, EMPTY_ROOT), [SIGNER])
    renamed = NoteSigner.from_seed("someone.else", bytes(range(32))).verifier()
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_checkpoint(note, [renamed])
    with pytest.raises(VerificationError, match="origin"):
        open_checkpoint(note, [SIGNER.verifier()], origin="other/origin")
    with pytest.raises(VerificationError, match="cannot sign"):
        sign_checkpoint(Checkpoint("other/origin", 1, EMPTY_ROOT), [SIGNER])


def test_forged_or_foreign_signatures_fail() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, EMPTY_ROOT), [SIGNER])
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_checkpoint(note, [OTHER.verifier()])
    forged = note.replace(b"\n7\n", b"\n8\n")
    with pytest.raises(VerificationError, match="invalid signature"):
        open_checkpoint(forged, [SIGNER.verifier()])


def test_dual_signed_note_verifies_with_either_key() -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, EMPTY_ROOT), [SIGNER, OTHER])
    assert len(note_key_ids(note)) == 2
    assert open_checkpoint(note, [SIGNER.verifier()]).signed_by == (SIGNER.verifier().key_id,)
    both = open_checkpoint(note, [SIGNER.verifier(), OTHER.verifier()])
    assert set(both.signed_by) == {SIGNER.verifier().key_id, OTHER.verifier().key_id}
