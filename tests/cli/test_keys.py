"""``icvgw keys``: init, rotate (re-sealing a store), public, list; a bad path is one line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.crypto import NoteVerifier
from gateway.errors import KeyStoreError
from gateway.keys import KeyRing, init_keys


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_init_rotate_public_list(tmp_path: Path) -> None:
    runner = CliRunner()
    kd = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "init", "--out", str(kd)])
    assert result.exit_code == 0, result.output
    assert _mode(kd) == 0o700
    result = runner.invoke(app, ["keys", "rotate", "--dir", str(kd), "--only", "audit-signing"])
    assert result.exit_code == 0, result.output
    assert "audit-signing now 2" in result.output
    out = tmp_path / "pub.vkeys"
    result = runner.invoke(
        app, ["keys", "public", "--dir", str(kd), "--origin", "o.example/1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert [NoteVerifier.from_vkey(v).name for v in lines] == ["o.example/1", "o.example/1"]
    ring = KeyRing.load(kd)
    for path in kd.iterdir():
        secret = path.read_text().strip()
        assert secret not in out.read_text()
        assert secret not in result.output
    assert lines == ring.verifier_keys("o.example/1")
    result = runner.invoke(app, ["keys", "list", "--dir", str(kd)])
    assert result.exit_code == 0
    assert "audit-signing: generations 1, 2 (current 2)" in result.output
    (kd / "audit-hmac.0001.key").chmod(0o644)
    result = runner.invoke(app, ["keys", "list", "--dir", str(kd)])
    assert result.exit_code == 2
    assert "accessible by group or others" in result.output


def test_cli_rotate_with_a_store_reseals_it(tmp_path: Path) -> None:
    from gateway.store import open_store
    from gateway.store.deadletters import DeadLetterRow, add_deadletters, deadletter

    ring = init_keys(tmp_path / "k")
    url = f"sqlite:///{tmp_path / 's.db'}"
    row = DeadLetterRow(0, 5, "not-json", "vehicles/LSVAU2180N2183294/telemetry", b"{")
    with open_store(url, shard="w", keys=ring) as s, s.transaction() as tx:
        add_deadletters(tx, "w", [row])
    args = ["keys", "rotate", "--dir", str(tmp_path / "k"), "--only", "store", "--store", url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "store now 2" in result.output and "re-sealed 1 value(s)" in result.output
    (tmp_path / "k" / "store.0001.key").unlink()  # no longer needed by this store
    with open_store(url, keys=KeyRing.load(tmp_path / "k")) as s, s.snapshot() as rd:
        assert deadletter(rd, "w", 0) == row


def test_cli_rotate_reports_a_reseal_it_could_not_compact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from gateway.store import dialects as store_module
    from gateway.store import open_store
    from gateway.store.deadletters import DeadLetterRow, add_deadletters

    ring = init_keys(tmp_path / "k")
    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url, shard="w", keys=ring) as s, s.transaction() as tx:
        add_deadletters(tx, "w", [DeadLetterRow(0, 5, "not-json", "t", b"{")])
    monkeypatch.setattr(store_module.SqliteStore, "_timeout", 0.2)
    reader = sqlite3.connect(tmp_path / "s.db")
    try:
        reader.execute("begin")
        reader.execute("select count(*) from deadletters").fetchone()
        args = ["keys", "rotate", "--dir", str(tmp_path / "k"), "--only", "store", "--store", url]
        result = CliRunner().invoke(app, args)
    finally:
        reader.close()
    # Rotated and re-sealed (committed) all the same; what was not done is said.
    assert result.exit_code == 0, result.output
    assert "re-sealed 1 value(s)" in result.output
    assert "warning: the store was not compacted" in result.output


def test_init_refuses_a_missing_or_non_directory_parent(tmp_path: Path) -> None:
    """A mistyped path is one line of error, not a traceback nor a tree of new directories."""
    result = CliRunner().invoke(app, ["keys", "init", "--out", str(tmp_path / "no" / "keys")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'no' / 'keys'}: directory {tmp_path / 'no'} does not exist" in (
        result.stderr
    )
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyStoreError, match="file/keys: cannot create the key directory"):
        init_keys(tmp_path / "file" / "keys")
