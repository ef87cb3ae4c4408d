"""Signed notes against the published vectors of Go's note package.

Vectors copied from golang.org/x/mod/sumdb/note/note_test.go (TestNewVerifier, TestSign,
TestOpen; BSD-3-Clause, The Go Authors).
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.crypto import NoteSigner, NoteVerifier, key_hash
from gateway.errors import VerificationError
from gateway.tlog.note import open_note, read_verifier_keys, sign_note

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)


def test_go_verifier_key_parses_with_its_key_hash() -> None:
    v = NoteVerifier.from_vkey(PETER_VKEY)
    assert v.name == "PeterNeumann"
    assert v.key_hash == 0xC74F20A3
    assert v.vkey == PETER_VKEY


def test_go_signed_note_opens_with_our_verifier() -> None:
    note = open_note((TEXT + "\n" + PETER_SIG).encode(), [NoteVerifier.from_vkey(PETER_VKEY)])
    assert note.text == TEXT
    assert [s.key_id for s in note.sigs] == ["PeterNeumann+c74f20a3"]


def test_our_signer_reproduces_go_signature_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(PETER_SKEY)
    assert signer.skey == PETER_SKEY
    assert signer.verifier().vkey == PETER_VKEY
    assert sign_note(TEXT, [signer]) == (TEXT + "\n" + PETER_SIG).encode()


def test_key_id_rule_for_a_fresh_key() -> None:
    seed = bytes(range(32))
    signer = NoteSigner.from_seed("icvgw.example/audit/w1", seed)
    pub = signer.public_key
    expected = int.from_bytes(
        hashlib.sha256(b"icvgw.example/audit/w1\n\x01" + pub).digest()[:4], "big"
    )
    assert signer.key_hash == expected == key_hash("icvgw.example/audit/w1", b"\x01" + pub)
    msg = sign_note("hello\n", [signer]).decode()
    text, sig_line = msg.split("\n\n")
    assert text == "hello"
    assert sig_line.startswith("— icvgw.example/audit/w1 ") and sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert int.from_bytes(raw[:4], "big") == expected
    assert len(raw) == 4 + 64
    vkey = signer.verifier().vkey
    name, hash16, key64 = vkey.split("+", 2)
    assert (name, int(hash16, 16), base64.b64decode(key64)) == (
        "icvgw.example/audit/w1",
        expected,
        b"\x01" + pub,
    )


def test_unknown_signatures_are_kept_unverified_and_known_ones_required() -> None:
    msg = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    enoch = NoteVerifier.from_vkey(ENOCH_VKEY)
    one = open_note(msg, [peter])
    assert [s.name for s in one.sigs] == ["PeterNeumann"]
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(msg, [peter, enoch])
    assert [s.name for s in both.sigs] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        open_note(msg, [])


def test_a_bad_signature_by_a_known_key_is_rejected() -> None:
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(
        VerificationError, match=r"invalid signature for key PeterNeumann\+c74f20a3"
    ):
        open_note(bad.encode(), [NoteVerifier.from_vkey(PETER_VKEY)])


def test_an_edited_text_is_rejected() -> None:
    msg = (TEXT.replace("answer", "Answer") + "\n" + PETER_SIG).encode()
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(msg, [NoteVerifier.from_vkey(PETER_VKEY)])


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
        "gKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_from_go_suite(msg: str) -> None:
    with pytest.raises(VerificationError, match="malformed note"):
        open_note(msg.encode(), [NoteVerifier.from_vkey(PETER_VKEY)])


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(VerificationError, match="malformed note"):
        open_note(
            b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [NoteVerifier.from_vkey(PETER_VKEY)]
        )


def test_mangled_verifier_keys_are_refused() -> None:
    b = bytearray(PETER_VKEY.encode())
    for i in range(len(b)):
        b[i] = (b[i] + 1) % 128
        with pytest.raises(VerificationError):
            NoteVerifier.from_vkey(b.decode())
        b[i] = (b[i] - 1) % 128
    for bad in (
        PETER_VKEY[:-1],
        PETER_VKEY[1:],
        # wrong length key / unknown algorithm, both with adjusted key hash (Go's test)
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        with pytest.raises(VerificationError):
            NoteVerifier.from_vkey(bad)


def test_signing_refuses_text_a_verifier_would_misread() -> None:
    signer = NoteSigner.from_skey(PETER_SKEY)
    for text in ("abc", "a\n\nb\n", "tab\there\n"):
        with pytest.raises(VerificationError, match="malformed note"):
            sign_note(text, [signer])


def test_signer_repr_hides_the_seed() -> None:
    signer = NoteSigner.from_skey(PETER_SKEY)
    assert "AYEKFALV" not in repr(signer)
    assert signer._seed.hex() not in repr(signer)


def test_read_verifier_keys_skips_comments() -> None:
    keys = read_verifier_keys(f"# auditor's keys\n\n{PETER_VKEY}\n  {ENOCH_VKEY}  \n")
    assert [k.name for k in keys] == ["PeterNeumann", "EnochRoot"]
