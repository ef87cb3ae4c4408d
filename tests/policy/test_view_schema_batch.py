"""The schema of a batch (``delivery.batch_max_views`` > 1): an array of 1 to
``batch_max_views`` views, each exactly a view of its subscriber; checked with
``jsonschema_rs`` (the validator schemathesis brings), so a batch too long, empty, or with
an element the view schema refuses fails. And the loader's refusal of ``linger_ms`` without
batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from gateway.errors import PolicyError
from gateway.policy import load_bundle
from gateway.policy.bundle import PolicyBundle
from gateway.policy.view_schema import batch_schema, delivery_schema, view_schema
from tests.policy.conftest import edit, line_of
from tests.policy.test_view_schema import record

SUB = "sh-traffic"
TOPIC = "        topic: share/sh-traffic\n"


def batched(bundle_dir: Path, settings: str) -> Path:
    """``bundle_dir`` with ``settings`` (delivery lines) added to ``SUB``'s delivery."""
    subs = bundle_dir / "subscribers.yaml"
    edit(subs, TOPIC, TOPIC + settings)
    return subs


def views(n: int, subscriber: str = SUB) -> list[dict[str, Any]]:
    return [{**record(subscriber, None, {}), "message_id": f"m-{i}"} for i in range(n)]


@pytest.fixture
def bundle(bundle_dir: Path) -> PolicyBundle:
    batched(bundle_dir, "        batch_max_views: 3\n        linger_ms: 250\n")
    return load_bundle(bundle_dir)


def test_a_batch_of_one_to_batch_max_views_views_validates(bundle: PolicyBundle) -> None:
    validator = jsonschema_rs.Draft202012Validator(batch_schema(bundle, SUB))
    one = jsonschema_rs.Draft202012Validator(view_schema(bundle, SUB))
    assert one.is_valid(views(1)[0])  # the sample is a valid view
    for n in (1, 2, 3):
        assert validator.is_valid(views(n)), n


@pytest.mark.parametrize(
    ("what", "batch"),
    [
        ("more than batch_max_views", views(4)),
        ("empty", []),
        ("one view, not in an array", views(1)[0]),
        ("an element with an extra property", [*views(2), {**views(1)[0], "vin": "x"}]),
        (
            "an element missing its message id",
            [{k: v for k, v in views(1)[0].items() if k != "message_id"}],
        ),
        ("another subscriber's view", [*views(1), *views(1, "mapco-nav")]),
    ],
)
def test_a_batch_that_is_not_one_fails(bundle: PolicyBundle, what: str, batch: Any) -> None:
    validator = jsonschema_rs.Draft202012Validator(batch_schema(bundle, SUB))
    assert not validator.is_valid(batch), what


def test_delivery_schema_is_the_batch_only_for_a_batched_subscriber(bundle: PolicyBundle) -> None:
    assert delivery_schema(bundle, SUB) == batch_schema(bundle, SUB)
    assert delivery_schema(bundle, SUB)["maxItems"] == 3
    assert delivery_schema(bundle, "mapco-nav") == view_schema(bundle, "mapco-nav")


@pytest.mark.parametrize("settings", ["", "        batch_max_views: 1\n"])
def test_linger_ms_without_batches_is_refused_with_file_line_and_field(
    bundle_dir: Path, settings: str
) -> None:
    subs = batched(bundle_dir, "        linger_ms: 200\n" + settings)
    with pytest.raises(PolicyError) as caught:
        load_bundle(bundle_dir)
    delivery = line_of(subs, "delivery:", 2)  # sh-traffic is the third subscriber
    assert [str(p) for p in caught.value.problems] == [
        f"{subs}:{delivery}: subscribers[2].view.delivery: linger_ms waits for a batch: it "
        "needs batch_max_views above 1"
    ]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ("        batch_max_views: 1001\n", "batch_max_views"),
        ("        batch_max_views: 0\n", "batch_max_views"),
        ("        batch_max_views: 10\n        linger_ms: 5001\n", "linger_ms"),
    ],
)
def test_batch_settings_out_of_bounds_are_refused(
    bundle_dir: Path, settings: str, field: str
) -> None:
    subs = batched(bundle_dir, settings)
    with pytest.raises(PolicyError) as caught:
        load_bundle(bundle_dir)
    (problem,) = caught.value.problems
    assert str(problem).startswith(
        f"{subs}:{line_of(subs, f'        {field}:')}: subscribers[2].view.delivery.{field}: "
    )
