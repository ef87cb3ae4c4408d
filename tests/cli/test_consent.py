"""``icvgw consent``: grant, list, withdraw and import consents in the store, audited; input
checked before the store is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from gateway.config import GatewayConfig


def test_consent_cli_grants_lists_and_withdraws(config: GatewayConfig) -> None:
    from typer.testing import CliRunner

    from gateway.cli.main import app

    runner = CliRunner()
    vin = "LSVAU218XN2183294"  # the check digit is right: grant checks it as the ingest does
    base = ["--store", config.store]
    out = runner.invoke(
        app,
        ["consent", "grant", *base, "--keys", config.keys, "--vin", vin,
         "--purpose", "traffic-management", "--expires", "2030-01-01T00:00:00+08:00",
         "--id", "c-cli"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    listed = runner.invoke(app, ["consent", "list", *base, "--keys", config.keys, "--vin", vin])
    assert "c-cli" in listed.output and "traffic-management" in listed.output
    assert vin not in listed.output
    gone = runner.invoke(app, ["consent", "withdraw", *base, "c-cli"])
    assert gone.exit_code == 0, gone.output
    again = runner.invoke(app, ["consent", "withdraw", *base, "c-cli"])
    assert again.exit_code == 1
    bad = runner.invoke(
        app,
        ["consent", "grant", *base, "--keys", config.keys, "--vin", vin,
         "--purpose", "p", "--expires", "2030-01-01T00:00:00"],
    )  # fmt: skip
    assert bad.exit_code == 2
    with sqlite3.connect(config.store.removeprefix("sqlite:///")) as con:
        actions = [
            orjson.loads(b)["subject"]
            for (b,) in con.execute("select body from audit_entries where kind='admin'")
        ]
    assert actions.count("c-cli") == 2  # granted, then withdrawn: both audited


def test_consent_list_finds_a_consent_recorded_before_a_key_rotation(
    config: GatewayConfig,
) -> None:
    from typer.testing import CliRunner

    from gateway.cli.main import app
    from gateway.keys import rotate_keys

    runner = CliRunner()
    vin = "LSVAU218XN2183294"  # the check digit is right: grant checks it as the ingest does
    base = ["--store", config.store, "--keys", config.keys]
    out = runner.invoke(
        app,
        ["consent", "grant", *base, "--vin", vin, "--purpose", "traffic-management",
         "--expires", "2030-01-01T00:00:00+08:00", "--id", "c-before"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    rotate_keys(config.keys)
    listed = runner.invoke(app, ["consent", "list", *base, "--vin", vin])
    assert "c-before" in listed.output, listed.output


def _cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from gateway.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _admin_subjects(config: GatewayConfig) -> list[str]:
    with sqlite3.connect(config.store.removeprefix("sqlite:///")) as con:
        return [
            orjson.loads(b)["subject"]
            for (b,) in con.execute("select body from audit_entries where kind='admin'")
        ]


@pytest.mark.parametrize(
    ("vin", "purpose", "expires", "said"),
    [
        ("x", "traffic-management", "2030-01-01T00:00:00+08:00", "--vin"),
        ("LSVAU2180N2183294", "traffic-management", "2030-01-01T00:00:00+08:00", "check digit"),
        ("LSVAU218XN2183294", "nope", "2030-01-01T00:00:00+08:00", "catalogue"),
        ("LSVAU218XN2183294", "traffic-management", "2020-01-01T00:00:00+08:00", "past"),
    ],
)
def test_consent_grant_checks_the_vin_purpose_and_expiry_first(
    config: GatewayConfig, vin: str, purpose: str, expires: str, said: str
) -> None:
    code, _, err = _cli(
        "consent", "grant", "--store", config.store, "--keys", config.keys,
        "--vin", vin, "--purpose", purpose, "--expires", expires,
    )  # fmt: skip
    assert code == 2
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not Path(config.store.removeprefix("sqlite:///")).exists()  # nothing opened


def _write(path: Path, *rows: str, header: str = "vin,purpose,expires") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_consent_import_records_every_row_audited_and_twice_changes_nothing(
    config: GatewayConfig, tmp_path: Path
) -> None:
    from gateway.testing import make_vin

    vins = [make_vin(i) for i in range(3)]
    csv_file = _write(
        tmp_path / "fleet.csv",
        *(f"{v},traffic-management,2030-01-01T00:00:00+08:00" for v in vins),
        f"{vins[0]},product-quality,2031-01-01T00:00:00+08:00",
    )
    base = ("--store", config.store, "--keys", config.keys)
    code, out, err = _cli("consent", "import", str(csv_file), *base)
    assert code == 0, err
    assert "imported 4 consent(s)" in out
    assert len(_admin_subjects(config)) == 4  # one consent.changed entry per consent
    code, listed, _ = _cli("consent", "list", *base, "--vin", vins[0])
    assert "traffic-management" in listed and "product-quality" in listed
    code, out, err = _cli("consent", "import", str(csv_file), *base)
    assert code == 0, err
    assert "nothing to import" in out
    assert len(_admin_subjects(config)) == 4


def test_consent_import_with_a_bad_row_names_it_and_imports_nothing(
    config: GatewayConfig, tmp_path: Path
) -> None:
    from gateway.testing import make_vin

    csv_file = _write(
        tmp_path / "fleet.csv",
        f"{make_vin(1)},traffic-management,2030-01-01T00:00:00+08:00",
        f"{make_vin(2)},nope,2030-01-01T00:00:00+08:00",
        f"{make_vin(3)},traffic-management,2030-01-01T00:00:00",
    )
    code, _, err = _cli("consent", "import", str(csv_file), "--store", config.store,
                        "--keys", config.keys)  # fmt: skip
    assert code == 2
    assert err.splitlines() == [
        f"error: {csv_file}:3: purpose 'nope': not in the bundle's catalogue "
        "(navigation-map, usage-based-insurance, traffic-management, product-quality)",
        f"error: {csv_file}:4: expires '2030-01-01T00:00:00': give a UTC offset, "
        "e.g. 2030-01-01T00:00:00+08:00",
    ]
    assert not Path(config.store.removeprefix("sqlite:///")).exists()


def test_consent_import_checks_the_header_and_bounds_the_file(
    config: GatewayConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import consents
    from gateway.testing import make_vin

    base = ("--store", config.store, "--keys", config.keys)
    wrong = _write(tmp_path / "wrong.csv", "x,traffic-management", header="vin,purpose")
    code, _, err = _cli("consent", "import", str(wrong), *base)
    assert (code, err) == (2, f"error: {wrong}:1: header must be vin,purpose,expires[,id], "
                              "got 'vin,purpose'\n")  # fmt: skip
    monkeypatch.setattr(consents, "MAX_IMPORT_ROWS", 2)
    big = _write(
        tmp_path / "big.csv",
        *(f"{make_vin(i)},traffic-management,2030-01-01T00:00:00+08:00" for i in range(3)),
    )
    code, _, err = _cli("consent", "import", str(big), *base)
    assert code == 2 and f"{big}:4: more than 2 consents" in err
    twice = _write(
        tmp_path / "twice.csv",
        f"{make_vin(1)},traffic-management,2030-01-01T00:00:00+08:00,c-1",
        f"{make_vin(2)},traffic-management,2030-01-01T00:00:00+08:00,c-1",
        header="vin,purpose,expires,id",
    )
    code, _, err = _cli("consent", "import", str(twice), *base)
    assert code == 2 and f"{twice}:3: id 'c-1' appears twice" in err
