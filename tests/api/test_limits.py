"""What every request goes through: bodies bounded however they are sent, an access log that
repeats nothing a client chose."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.apikeys import Role
from tests.api.conftest import Api

VIN = "LSVAU2180N2183294"


@pytest.mark.parametrize("path", ["/v1/consents/import", "/v1/policy/explain"])
def test_a_chunked_body_over_the_limit_is_a_413_problem(api: Api, path: str) -> None:
    limit = api.ctx.config.api.max_body_bytes

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        sent = 0
        while sent <= limit:
            yield b"x" * 65536
            sent += 65536

    r = api.client.post(path, content=chunks(), headers=api.headers(api.key(Role.ADMIN)))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_the_access_log_does_not_repeat_a_method_the_client_made_up(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.api.access")
    r = api.client.request(VIN, "/healthz")
    assert r.status_code == 405
    assert "- /healthz 405" in caplog.text or "- - 405" in caplog.text
    assert VIN not in caplog.text
