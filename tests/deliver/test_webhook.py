"""Standard Webhooks signing and the receiver's check, against the spec's published example
and the reference implementation (PyPI ``standardwebhooks``); the retry schedule's bounds."""

from __future__ import annotations

import base64
import random
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.deliver.webhook import (
    format_secret,
    parse_secret,
    retry_delay_s,
    sign,
    signed_headers,
    verify,
)
from gateway.errors import DeliveryError, SignatureError

# The example of the specification (https://www.standardwebhooks.com, "Verifying webhooks"):
# this secret, id, timestamp and body give this signature.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = bytes(range(32))
BODY = b'{"message_id":"5d1c","audit_seq":7,"Vehicle.Speed":42.5}'


def test_the_spec_example_signs_and_verifies() -> None:
    assert sign(parse_secret(SPEC_SECRET), SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIGNATURE,
    }
    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TS + 10)


def test_our_headers_verify_with_the_reference_implementation() -> None:
    now = int(time.time())
    headers = signed_headers([SECRET], "m-1", now, BODY)
    assert headers["webhook-id"] == "m-1"
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(format_secret(SECRET)).verify(BODY, headers) == {
        "message_id": "5d1c",
        "audit_seq": 7,
        "Vehicle.Speed": 42.5,
    }
    verify(format_secret(SECRET), headers, BODY)


def test_the_reference_implementations_signature_verifies_with_ours() -> None:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(SPEC_TS, UTC)
    signature = Webhook(format_secret(SECRET)).sign("m-2", when, BODY.decode())
    headers = {
        "webhook-id": "m-2",
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": signature,
    }
    verify(SECRET, headers, BODY, now=SPEC_TS)


def test_a_secret_round_trips_through_its_whsec_form() -> None:
    text = format_secret(SECRET)
    assert text.startswith("whsec_") and base64.b64decode(text[6:]) == SECRET
    assert parse_secret(text) == SECRET == parse_secret(text[6:])
    with pytest.raises(SignatureError, match="not base64"):
        parse_secret("whsec_not base64!")
    with pytest.raises(SignatureError, match="empty"):
        parse_secret("whsec_")


def _headers(ts: int, secrets: list[bytes] | None = None) -> dict[str, str]:
    return signed_headers(secrets or [SECRET], "m-3", ts, BODY)


def test_the_verifier_rejects_a_tampered_body() -> None:
    now = 1_700_000_000
    headers = _headers(now)
    verify(SECRET, headers, BODY, now=now)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(SECRET, headers, BODY.replace(b"42.5", b"42.6"), now=now)
    tampered, fresh = BODY.replace(b"42.5", b"42.6"), _headers(int(time.time()))
    with pytest.raises(WebhookVerificationError):  # and so does the reference
        Webhook(format_secret(SECRET)).verify(tampered, fresh)


def test_the_verifier_rejects_a_wrong_secret() -> None:
    now = 1_700_000_000
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(b"\x01" * 32, _headers(now), BODY, now=now)


def test_the_verifier_rejects_a_changed_id_or_timestamp() -> None:
    now = 1_700_000_000
    headers = _headers(now)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(SECRET, {**headers, "webhook-id": "m-4"}, BODY, now=now)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(SECRET, {**headers, "webhook-timestamp": str(now + 1)}, BODY, now=now)


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
def test_the_verifier_rejects_a_timestamp_outside_the_tolerance(skew: int) -> None:
    now = 1_700_000_000
    headers = _headers(now + skew)
    with pytest.raises(SignatureError, match="more than 300 s from now"):
        verify(SECRET, headers, BODY, now=now)
    verify(SECRET, headers, BODY, now=now, tolerance_s=abs(skew))
    verify(SECRET, _headers(now + 299), BODY, now=now)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-signature": ""},
        {"webhook-timestamp": "1700000000.5"},
        {"webhook-timestamp": "-5"},
        {"webhook-signature": "v2,AAAA"},
        {"webhook-signature": "garbage"},
    ],
)
def test_the_verifier_rejects_missing_or_malformed_headers(change: dict[str, str]) -> None:
    now = 1_700_000_000
    with pytest.raises(SignatureError):
        verify(SECRET, {**_headers(now), **change}, BODY, now=now)
    assert issubclass(SignatureError, DeliveryError)


def test_header_names_are_matched_regardless_of_case() -> None:
    now = 1_700_000_000
    headers = {k.title(): v for k, v in _headers(now).items()}
    assert "Webhook-Signature" in headers
    verify(SECRET, headers, BODY, now=now)


def test_any_of_several_signatures_verifies_during_a_rotation() -> None:
    old, new = b"\x02" * 32, b"\x03" * 32
    now = 1_700_000_000
    headers = _headers(now, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify(old, headers, BODY, now=now)
    verify(new, headers, BODY, now=now)
    with pytest.raises(SignatureError):
        verify(SECRET, headers, BODY, now=now)


def test_retry_delays_are_full_jitter_below_a_doubling_cap() -> None:
    rng = random.Random(7)
    for attempts in range(1, 15):
        cap = min(30.0, 0.5 * 2 ** (attempts - 1))
        delays = [
            retry_delay_s(attempts, initial_s=0.5, max_s=30.0, rand=rng.random())
            for _ in range(400)
        ]
        assert all(0 <= d < cap for d in delays), attempts
        # Spread over the whole window, not bunched at one end (400 draws).
        assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap
    assert retry_delay_s(1, initial_s=1, max_s=300, rand=0.999) == pytest.approx(0.999)
    assert retry_delay_s(4, initial_s=1, max_s=300, rand=0.5) == 4.0
    assert retry_delay_s(100, initial_s=1, max_s=300, rand=0.5) == 150.0
    assert retry_delay_s(3, initial_s=1, max_s=300, rand=0.0) == 0.0
