"""Standard Webhooks (https://www.standardwebhooks.com): signing, the receiver's check, and
the retry schedule of the webhook sink.

The sink (:mod:`gateway.api.webhooks`) POSTs each view — or, for a subscriber whose view
sets ``delivery.batch_max_views`` above 1, each batch of views as one JSON array
(:mod:`gateway.deliver.batch`) — with three headers:

* ``webhook-id`` — the view's message id (a batch's: :func:`~gateway.deliver.batch.batch_id`
  of its views' message ids), the same on every attempt: a receiver de-duplicates retries on
  it; after a restart a batch may be cut differently, so a batched receiver de-duplicates on
  each view's ``message_id``;
* ``webhook-timestamp`` — when this attempt was signed, in Unix seconds;
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``,
  one per secret in force, separated by spaces (during a webhook key rotation: the new
  secret's and the previous one's, so a platform switches secrets without losing a view).

A platform is given its secret as ``whsec_<base64>`` (``icvgw webhook secret``).
:func:`verify` is the receiver's side: one signature matches the exact body received, and
the timestamp is within a tolerance of now (5 minutes by default), which bounds how long a
captured request can be replayed. Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

from gateway.errors import SignatureError

__all__ = [
    "SECRET_PREFIX",
    "TOLERANCE_S",
    "format_secret",
    "parse_secret",
    "retry_delay_s",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300.0
"""How far a timestamp may be from the receiver's clock, either way (the spec's 5 minutes)."""


def format_secret(secret: bytes) -> str:
    """``whsec_<base64>``: how a secret is given to its platform."""
    return SECRET_PREFIX + base64.b64encode(secret).decode("ascii")


def parse_secret(text: str) -> bytes:
    """The bytes of a ``whsec_<base64>`` secret (the prefix is optional); raises
    :class:`~gateway.errors.SignatureError` for one that is not base64 or is empty."""
    try:
        secret = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the webhook secret is not base64 after 'whsec_'") from None
    if not secret:
        raise SignatureError("the webhook secret is empty")
    return secret


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature: ``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signed_headers(
    secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt to deliver ``body``: id, timestamp and a signature with
    each of ``secrets``."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def verify(
    secret: bytes | str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Check a request as its receiver must, on the exact body bytes received: returns if
    a ``v1`` signature made with ``secret`` (bytes, or ``whsec_<base64>``) matches and the
    timestamp is within ``tolerance_s`` of ``now`` (default: this machine's clock); raises
    :class:`~gateway.errors.SignatureError` saying which part failed otherwise."""
    key = parse_secret(secret) if isinstance(secret, str) else secret
    found = {k.lower(): v for k, v in headers.items()}
    msg_id = found.get("webhook-id", "")
    stamp = found.get("webhook-timestamp", "")
    signatures = found.get("webhook-signature", "")
    if not (msg_id and stamp and signatures):
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are needed")
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError("webhook-timestamp is not Unix seconds")
    clock = time.time() if now is None else now
    if abs(clock - int(stamp)) > tolerance_s:
        raise SignatureError(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    expected = sign(key, msg_id, int(stamp), body).encode("ascii")
    for given in signatures.split(" "):
        if given.startswith("v1,") and hmac.compare_digest(given.encode(), expected):
            return
    raise SignatureError("no signature matches the body with this secret")


def retry_delay_s(attempts: int, *, initial_s: float, max_s: float, rand: float) -> float:
    """The wait before the next attempt after ``attempts`` failed ones (``attempts >= 1``):
    ``rand`` (uniform in [0, 1)) times ``min(max_s, initial_s * 2**(attempts-1))`` — full
    jitter, so receivers that failed together are not retried together."""
    cap = min(max_s, initial_s * 2.0 ** min(attempts - 1, 64))
    return rand * cap
