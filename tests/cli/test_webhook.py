"""``icvgw webhook secret``: the secret the sink signs a subscriber's requests with, alone on
stdout; a key directory older than webhooks gets its webhook key; a rotation changes it."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.deliver.webhook import format_secret, parse_secret, sign
from gateway.keys import KeyRing, init_keys


def secret(keys: Path, subscriber: str = "sh-traffic") -> tuple[str, str]:
    result = CliRunner().invoke(
        app, ["webhook", "secret", "--keys", str(keys), "--subscriber", subscriber]
    )
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_the_secret_printed_is_the_one_requests_are_signed_with(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / "webhook.0001.key").unlink()  # a key directory made before webhooks
    out, err = secret(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k" / "webhook.0001.key").stat().st_mode) == 0o600
    ring = KeyRing.load(tmp_path / "k")
    assert out == format_secret(ring.webhook_secret("sh-traffic")) + "\n"
    assert sign(parse_secret(out.strip()), "m", 1, b"{}") == sign(
        ring.webhook_secret("sh-traffic"), "m", 1, b"{}"
    )
    assert "generation 1" in err and "not webhook" in err  # the shipped policy sends MQTT
    assert out.strip() not in err
    assert secret(tmp_path / "k", "mapco-nav")[0] != out  # each subscriber its own


def test_a_rotation_gives_a_new_secret(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    before, _ = secret(tmp_path / "k")
    result = CliRunner().invoke(
        app, ["keys", "rotate", "--dir", str(tmp_path / "k"), "--only", "webhook"]
    )
    assert result.exit_code == 0, result.output
    after, err = secret(tmp_path / "k")
    assert after != before and "generation 2" in err
