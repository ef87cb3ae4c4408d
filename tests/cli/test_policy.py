"""``icvgw policy check / show / schema`` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.policy import load_bundle
from gateway.resources import default_policy_dir
from tests.policy.conftest import edit, line_of

runner = CliRunner()


def test_check_shipped_bundle_by_default() -> None:
    result = runner.invoke(app, ["policy", "check"])
    assert result.exit_code == 0, result.output
    assert f"ok: {default_policy_dir()}" in result.stdout
    assert f"version {load_bundle().version}" in result.stdout


def test_check_named_directory() -> None:
    result = runner.invoke(app, ["policy", "check", str(default_policy_dir())])
    assert result.exit_code == 0, result.output
    assert "4 subscribers, 3 zones" in result.stdout


def test_check_lists_every_problem_and_fails(bundle_dir: Path) -> None:
    subs = bundle_dir / "subscribers.yaml"
    rules = bundle_dir / "rules.yaml"
    edit(subs, "    storage_region: CN-GD", "    storage_region: Guangzhou")
    edit(rules, "  split_gap_s: 600", "  split_gap_s: 0")
    result = runner.invoke(app, ["policy", "check", str(bundle_dir)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{subs}:{line_of(subs, 'Guangzhou')}: subscribers[1].storage_region: 'Guangzhou' is not "
        "an ISO 3166 region code (a country such as CN, HK, DE, or a subdivision such as "
        "CN-SH, DE-BY)",
        f"{rules}:{line_of(rules, 'split_gap_s')}: trips.split_gap_s: Input should be greater "
        "than 0",
        "2 problems: the bundle does not load",
    ]


def test_show_summarises_subscribers_views_and_legal_bases() -> None:
    result = runner.invoke(app, ["policy", "show"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "mapco-nav",
        "insureco-ubi",
        "sh-traffic",
        "oem-hq-de",
        "cross-border",
        "raw, WGS-84",
        "1000 m grid, GCJ-02",
        "none (abroad, no geodata export approval)",
        "standard_contract",
        "FICTITIOUS-SCC-2025-0042",
        "example-prohibited-1",
        "trip_pseudonym",
        "coarsen to 50 m",
        "grid floor 50 m",
        "PI of more than 100,000 people is important data: yes",
        "FICTITIOUS-PIA-2025-0007, 2025-02-15",
        "views kept 7 days",
        "FICTITIOUS-审图号-0000001, 2025-03-01",
    ):
        assert text in out, text


def test_schema_prints_the_view_schema() -> None:
    result = runner.invoke(app, ["policy", "schema", "sh-traffic"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["properties"]["subscriber"] == {"const": "sh-traffic"}
    location = schema["properties"]["location"]["oneOf"][0]
    assert {"lat_gcj02", "lon_gcj02", "cell"} <= set(location["properties"])


def test_schema_of_another_bundle(bundle_dir: Path) -> None:
    edit(bundle_dir / "subscribers.yaml", "  - id: sh-traffic", "  - id: city-traffic")
    result = runner.invoke(app, ["policy", "schema", "city-traffic", "--dir", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["properties"]["subscriber"] == {"const": "city-traffic"}


def test_schema_of_a_batched_subscriber_is_the_batch_and_view_gives_one_view(
    bundle_dir: Path,
) -> None:
    topic = "        topic: share/sh-traffic\n"
    edit(bundle_dir / "subscribers.yaml", topic, topic + "        batch_max_views: 50\n")
    argv = ["policy", "schema", "sh-traffic", "-p", str(bundle_dir)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    batch = json.loads(result.stdout)
    assert (batch["type"], batch["minItems"], batch["maxItems"]) == ("array", 1, 50)
    assert batch["items"] == {"$ref": "#/$defs/view"}
    assert batch["$defs"]["view"]["properties"]["subscriber"] == {"const": "sh-traffic"}
    one = runner.invoke(app, [*argv, "--view"])
    assert one.exit_code == 0, one.output
    view = json.loads(one.stdout)
    assert view["type"] == "object"
    assert {k: v for k, v in view.items() if k != "$schema"} == batch["$defs"]["view"]
    unbatched = runner.invoke(app, ["policy", "schema", "mapco-nav", "-p", str(bundle_dir)])
    assert json.loads(unbatched.stdout)["type"] == "object"  # one view per message


def test_schema_unknown_subscriber() -> None:
    result = runner.invoke(app, ["policy", "schema", "nobody"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unknown subscriber 'nobody'; the bundle has: mapco-nav, insureco-ubi, sh-traffic, "
        "oem-hq-de\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["policy", "check", "--policies", "{d}"],
        ["policy", "check", "-p", "{d}"],
        ["policy", "check", "{d}"],  # the old positional spelling, hidden
        ["policy", "show", "-p", "{d}"],
        ["policy", "show", "{d}"],
        ["policy", "schema", "sh-traffic", "--policies", "{d}"],
        ["policy", "schema", "sh-traffic", "-d", "{d}"],  # the old --dir/-d, hidden
        ["policy", "schema", "sh-traffic", "--dir", "{d}"],
    ],
)
def test_the_bundle_is_policies_everywhere_and_old_spellings_still_work(
    argv: list[str], tmp_path: Path
) -> None:
    """Pointed at a directory that is no bundle, every spelling reports that directory."""
    missing = tmp_path / "nobundle"
    result = runner.invoke(app, [a.replace("{d}", str(missing)) for a in argv])
    assert result.exit_code == 1
    assert result.stderr == f"{missing}: not a directory\n"


def test_help_names_only_policies_for_the_bundle() -> None:
    for command in (["check"], ["show"], ["schema"], ["explain"]):
        text = runner.invoke(app, ["policy", *command, "--help"], env={"COLUMNS": "200"}).output
        assert "--policies" in text and " -p " in text, text
        assert "--dir" not in text and " -d " not in text, text
    result = runner.invoke(app, ["policy", "check", "-p", "a", "b"])
    assert result.exit_code == 2 and "given twice" in result.stderr
