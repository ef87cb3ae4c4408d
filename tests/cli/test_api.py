"""``icvgw api`` and ``icvgw apikey`` as processes: a key made on the command line opens the
live server's routes until it is revoked; TLS and mutual TLS through uvicorn's options."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gateway.keys import init_keys
from gateway.testing import free_port
from tests.ingest.tls_files import TlsFiles, make_tls_files


def icvgw(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def serve(tmp_path: Path, *flags: str) -> Iterator[str]:
    """A live ``icvgw api`` on a free port; yields its address (host:port)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "api", "--store", "sqlite:///s.sqlite", "--keys",
         "keys", "--port", str(port), *flags],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def wait_up(call: object, timeout: float = 60.0) -> httpx2.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()  # type: ignore[operator, no-any-return]
        except httpx2.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    return tmp_path


def test_a_key_from_the_cli_opens_its_routes_until_revoked(workdir: Path) -> None:
    made = icvgw(workdir, "apikey", "create", "--role", "admin", "--label", "ops",
                 "--store", "sqlite:///s.sqlite")  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    key_id = token.split("_")[1]
    assert "not shown again" in made.stderr and token not in made.stderr
    listed = icvgw(workdir, "apikey", "list", "--store", "sqlite:///s.sqlite")
    assert key_id in listed.stdout and "admin" in listed.stdout and "ops" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout
    auth = {"Authorization": f"Bearer {token}"}
    for address in serve(workdir):
        url = f"http://{address}/v1/policy"
        assert wait_up(lambda url=url: httpx2.get(url, headers=auth)).status_code == 200
        assert httpx2.get(url).status_code == 401
        revoked = icvgw(workdir, "apikey", "revoke", key_id, "--store", "sqlite:///s.sqlite")
        assert revoked.returncode == 0, revoked.stderr
        assert httpx2.get(url, headers=auth).status_code == 401
    again = icvgw(workdir, "apikey", "revoke", key_id, "--store", "sqlite:///s.sqlite")
    assert again.returncode == 2 and "already revoked" in again.stderr


def _client_context(tls: TlsFiles, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    if with_cert:
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return ctx


def test_tls_and_mutual_tls(workdir: Path) -> None:
    tls = make_tls_files(workdir / "tls", host="localhost")
    (workdir / "gw.yaml").write_text(
        "broker: {protocol: '5'}\n"
        "store: sqlite:///s.sqlite\n"
        "keys: keys\n"
        f"api: {{tls_cert: {tls.server_cert}, tls_key: {tls.server_key}, "
        f"tls_client_ca: {tls.ca}}}\n"
    )
    for address in serve(workdir, "--config", "gw.yaml"):
        url = f"https://{address}/healthz"
        with httpx2.Client(verify=_client_context(tls, with_cert=True)) as client:
            assert wait_up(lambda c=client, u=url: c.get(u)).json() == {"status": "ok"}
        refused = (httpx2.ConnectError, httpx2.ReadError, httpx2.RemoteProtocolError)
        with (
            httpx2.Client(verify=_client_context(tls, with_cert=False)) as client,
            pytest.raises(refused),
        ):
            client.get(url).raise_for_status()
        with pytest.raises(refused):  # no TLS at all
            httpx2.get(f"http://{address}/healthz").raise_for_status()
