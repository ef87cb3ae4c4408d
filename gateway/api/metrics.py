"""``/metrics``: the whole gateway in one Prometheus exposition, for monitor and admin keys.

The API and the pipeline are separate processes (a CPU-busy thread beside the pipeline
halved it), so the pipeline serves its own registry on its own endpoint
(``metrics.host:port``, :func:`gateway.metrics.serve`) and one scrape of this route gives:

(a) the API process's own registry (``ctx.registry``: the webhook sink, the API);
(b) gauges read from the store at scrape time (:class:`StoreGauges`): each subscriber's
    outbox backlog per channel, cross-border counts against the policy's thresholds, each
    audit shard's latest checkpoint, the policy version this process serves;
(c) the pipeline's exposition, fetched with a short timeout (``icvgw_pipeline_up`` says
    whether it answered).

A family appears once (``promtool check metrics`` rejects a second one): families of one
name and type from two sources are merged (a counter the webhook sink and the MQTT drainer
both keep is one family, told apart by ``channel``), a series an earlier source gave is not
repeated, and a family of the same name but another type is left out and logged. The
``_created`` series are left out: in the text format they are separate gauges, and two
sources' copies of one would be two families.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable, Iterator, Sequence

from fastapi import Depends
from fastapi.responses import Response
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.api.auth import context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.apikeys import Role
from gateway.commit import channel_of
from gateway.config import MetricsConfig
from gateway.errors import StoreError
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import ExportDataClass, counting_year
from gateway.store import Reader

__all__ = ["StoreGauges", "exposition", "merge", "read_pipeline", "router"]

log = logging.getLogger(__name__)

router = _router(Role.MONITOR, Role.ADMIN)

PIPELINE_TIMEOUT_S = 1.0
"""How long a scrape (or a readiness check) waits for the pipeline's endpoint."""


@router.get(
    "/metrics",
    summary="Prometheus metrics of the API, the store and the pipeline",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition (version 0.0.4)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(ctx: ApiContext = Depends(context)) -> Response:  # noqa: B008
    """Every family once: this process's registry, the store's gauges, the pipeline's."""
    return Response(exposition(ctx), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def exposition(ctx: ApiContext) -> bytes:
    """The text exposition of (a), (b) and (c) (see the module docstring)."""
    pipeline = read_pipeline(ctx.config.metrics)
    up = GaugeMetricFamily(
        "icvgw_pipeline_up",
        "1 if the pipeline's metrics endpoint answered this scrape (its families follow), else 0",
        value=0.0 if isinstance(pipeline, str) else 1.0,
    )
    families = merge(
        ctx.registry.collect(),
        StoreGauges(ctx).collect(),
        [up],
        [] if isinstance(pipeline, str) else pipeline,
    )
    return generate_latest(_Families(families))


def read_pipeline(config: MetricsConfig) -> list[Metric] | str:
    """The pipeline's metric families from its endpoint, or why they cannot be read."""
    if not config.enabled:
        return "the pipeline serves no metrics (metrics.enabled is false)"
    url = f"http://{config.host}:{config.port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": CONTENT_TYPE_PLAIN_0_0_4})
    try:
        with urllib.request.urlopen(request, timeout=PIPELINE_TIMEOUT_S) as r:
            text = r.read().decode("utf-8")
        return list(text_string_to_metric_families(text))
    except OSError as exc:
        return f"the pipeline does not answer at {url}: {exc}"
    except ValueError as exc:  # something else listens there
        return f"no Prometheus exposition at {url}: {exc}"


_TEXT_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_SUFFIX = {"counter": "_total", "info": "_info"}
_WITH_CREATED = ("counter", "histogram", "summary")


def _exposed(family: Metric) -> tuple[str, str]:
    """The family's name and type as the text format writes them."""
    return family.name + _SUFFIX.get(family.type, ""), _TEXT_TYPE.get(family.type, family.type)


def merge(*sources: Iterable[Metric]) -> list[Metric]:
    """The families of ``sources`` with each name once (see the module docstring)."""
    out: dict[str, Metric] = {}
    types: dict[str, str] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for source in sources:
        for family in source:
            name, kind = _exposed(family)
            if name not in out:
                out[name], types[name] = _empty_like(family), kind
            elif types[name] != kind:
                log.warning("metrics: %s (%s) is a %s elsewhere: left out", name, kind, types[name])
                continue
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in seen and not (kind in _WITH_CREATED and s.name.endswith("_created")):
                    seen.add(key)
                    out[name].samples.append(s)
    bases = {n.removesuffix("_total") for n in out}  # OpenMetrics reserves <base>_created
    return [
        f
        for n, f in out.items()
        if not (n.endswith("_created") and n.removesuffix("_created") in bases)
    ]


def _empty_like(family: Metric) -> Metric:
    return Metric(family.name, family.documentation, family.type, family.unit)


class _Families(Collector):
    """Fixed families, for :func:`prometheus_client.generate_latest`."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families given."""
        return iter(self._families)


class StoreGauges(Collector):
    """Gauges computed from the store when scraped (nothing kept between scrapes).

    A store that cannot be read gives ``icvgw_store_readable 0`` and no other gauge of
    its own; the scrape still answers with the rest."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        """Backlog, cross-border counts and thresholds, checkpoints, the API's policy."""
        bundle = self.ctx.bundle()
        now = self.ctx.clock()
        readable = GaugeMetricFamily(
            "icvgw_store_readable", "1 if the API process read the store on this scrape, else 0"
        )
        try:
            with self.ctx.store.snapshot() as rd:
                families = [
                    *_backlog(rd, bundle, now),
                    *_crossborder(rd, bundle, now),
                    *_checkpoints(rd),
                ]
        except StoreError as exc:
            log.warning("metrics: the store cannot be read: %s", exc)
            readable.add_metric([], 0.0)
            yield readable
        else:
            readable.add_metric([], 1.0)
            yield readable
            yield from families
        info = InfoMetricFamily(
            "icvgw_api_policy", "The policy bundle the API process serves (/v1/policy, explain)"
        )
        info.add_metric([], {"version": bundle.version})
        yield info


def _backlog(rd: Reader, bundle: PolicyBundle, now: float) -> list[Metric]:
    """Views committed and neither delivered nor given up, per subscriber and channel, over
    every worker's shard; 0 for each subscriber of the policy without any. Views of the
    ``http_stream`` channel are read, never confirmed: counted there, they would age for
    ever and an age alert would always fire (their readers' lag is at /v1/subscribers)."""
    depth = GaugeMetricFamily(
        "icvgw_outbox_depth",
        "Views committed and neither delivered nor given up, per subscriber and channel",
        labels=["subscriber", "channel"],
    )
    age = GaugeMetricFamily(
        "icvgw_outbox_oldest_age_seconds",
        "Age of the oldest such view (from its decision), 0 when there is none",
        labels=["subscriber", "channel"],
    )
    rows: dict[tuple[str, str], tuple[int, int]] = {}
    for shard in rd.shards():
        for subscriber, channel, n, oldest_ms in _outbox_backlog(rd, shard.shard):
            if channel == "http_stream":  # read, never confirmed: no backlog (lag: /v1/subscribers)
                continue
            count, first = rows.get((subscriber, channel), (0, oldest_ms))
            rows[(subscriber, channel)] = (count + n, min(first, oldest_ms))
    for sub in bundle.subscribers:
        if channel_of(bundle, sub) != "http_stream":
            rows.setdefault((sub, channel_of(bundle, sub)), (0, round(now * 1000)))
    for (subscriber, channel), (n, oldest_ms) in sorted(rows.items()):
        depth.add_metric([subscriber, channel], n)
        age.add_metric([subscriber, channel], max(0.0, now - oldest_ms / 1000) if n else 0.0)
    return [depth, age]


def _outbox_backlog(rd: Reader, shard: str) -> list[tuple[str, str, int, int]]:
    """(subscriber, channel, views, oldest created_ms) of ``shard``'s backlog (dead-letter
    notices, which have no subscriber, left out). Read through the ``outbox_pending`` index.

    This query belongs with the outbox's other SQL in :mod:`gateway.store.outbox`; it is
    here while that module changes in a parallel branch."""
    found = rd.fetch_all(
        "select subscriber, channel, count(*), min(created_ms) from outbox "
        "where shard = ? and delivered_ms is null and failed_ms is null and subscriber <> '' "
        "group by subscriber, channel",
        (shard,),
    )
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in found]


def _crossborder(rd: Reader, bundle: PolicyBundle, now: float) -> list[Metric]:
    """This counting year's distinct data subjects per cross-border recipient of the policy
    and category, beside the thresholds the policy sets for each category."""
    rules = bundle.rules.crossborder
    tiers = {
        ExportDataClass.PERSONAL_INFORMATION: rules.personal_information,
        ExportDataClass.SENSITIVE_PERSONAL_INFORMATION: rules.sensitive_personal_information,
    }
    year = counting_year(rules.year_utc_offset_hours, now)
    subjects = GaugeMetricFamily(
        "icvgw_crossborder_subjects",
        "Distinct data subjects (vehicles) exported to a cross-border recipient this counting "
        "year, per category",
        labels=["recipient", "year", "category"],
    )
    thresholds = GaugeMetricFamily(
        "icvgw_crossborder_threshold_subjects",
        "Subjects from which an export of a category needs a standard contract (tier "
        "contract) or a security assessment (tier assessment), as the policy sets them (a "
        "CIIO needs an assessment from the first; see vehicle_pi_over_100k_important)",
        labels=["category", "tier"],
    )
    for category, tier in tiers.items():
        thresholds.add_metric([category.value, "contract"], tier.contract_from)
        thresholds.add_metric([category.value, "assessment"], tier.assessment_from)
    for sub in sorted(s.id for s in bundle.subscribers.values() if s.cross_border):
        for category in tiers:
            n = rd.crossborder_count(sub, year, category.value)
            subjects.add_metric([sub, str(year), category.value], n)
    return [subjects, thresholds]


def _checkpoints(rd: Reader) -> list[Metric]:
    """Each audit shard's size and its latest signed checkpoint (size and time)."""
    size = GaugeMetricFamily(
        "icvgw_audit_log_size", "Entries in each audit shard", labels=["shard"]
    )
    covered = GaugeMetricFamily(
        "icvgw_audit_checkpoint_size",
        "Tree size of each audit shard's latest signed checkpoint",
        labels=["shard"],
    )
    at = GaugeMetricFamily(
        "icvgw_audit_checkpoint_timestamp_seconds",
        "When each audit shard's latest checkpoint was signed (Unix time)",
        labels=["shard"],
    )
    for shard in rd.shards():
        size.add_metric([shard.shard], shard.size)
        latest = rd.latest_checkpoint(shard.shard)
        if latest is not None:
            covered.add_metric([shard.shard], latest.size)
            at.add_metric([shard.shard], latest.created_ms / 1000)
    return [size, covered, at]
