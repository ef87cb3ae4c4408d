"""The HTTP API: feeds for platforms, the audit log for auditors, operations for operators.

It runs in its own process (``icvgw api``, started beside the pipeline by ``icvgw run`` and
``icvgw demo``) on the same store and key directory: a busy thread in the pipeline's
process was measured to halve the pipeline, so nothing here runs there.

* :mod:`~gateway.api.app` — :func:`create_app`, the FastAPI application;
* :mod:`~gateway.api.context` — what every route reads: config, store, keys, policy;
* :mod:`~gateway.api.auth` — API keys (Bearer), roles per route, rate limits;
* :mod:`~gateway.api.limits` — bounded bodies, an access log without VIN, key or position,
  errors as ``application/problem+json``;
* :mod:`~gateway.api.health` — ``/healthz``, ``/readyz``;
* :mod:`~gateway.api.feed` — a subscriber's ``/v1/feed`` (SSE), ``/v1/records``,
  ``/v1/schema``;
* :mod:`~gateway.api.webhooks` — the webhook sink (Standard Webhooks signatures);
* :mod:`~gateway.api.audit` — ``/v1/audit/…`` for auditors;
* :mod:`~gateway.api.admin` — policy, consents, subscribers, dead letters for operators;
* :mod:`~gateway.api.metrics` — ``/metrics``.
"""

from gateway.api.app import create_app
from gateway.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
