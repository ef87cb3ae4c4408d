"""The HTTP client of the end-to-end benchmark's ``gateway-api`` mode, in its own process.

It does what the platforms and the auditor of issue 13 do to a running gateway's API:

* every ``pull_every_s`` (1 s) it pulls each subscriber's new views with its subscriber key,
  ``GET /v1/records?after=<cursor>&limit=1000``, page after page while ``more`` (at most
  ``MAX_PAGES`` per subscriber and round): a platform that replays from the start and then
  keeps up;
* ``audit_per_s`` times a second it queries the audit log with the auditor key,
  ``GET /v1/audit/entries``, in turn: the newest entries of the last minute, one
  subscriber's blocked decisions, one subscriber's entries, 100 at a time.

Each request's duration is recorded; the benchmark reads the counts, statuses and latency
percentiles when it stops the client (``("stop",)`` -> ``("stopped", stats)``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

MAX_PAGES = 20
"""Pages per subscriber and round at most, so that one backlog cannot starve the audit
queries."""
PAGE = 1000


@dataclass
class _Stats:
    """What the client did."""

    pulls: int = 0
    views: int = 0
    audits: int = 0
    entries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    pull_ms: list[float] = field(default_factory=list)
    audit_ms: list[float] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) if values else None

        return {
            "seconds": seconds,
            "pulls": self.pulls,
            "views": self.views,
            "audits": self.audits,
            "entries": self.entries,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "pull_p50_ms": pct(self.pull_ms, 50),
            "pull_p99_ms": pct(self.pull_ms, 99),
            "audit_p50_ms": pct(self.audit_ms, 50),
            "audit_p99_ms": pct(self.audit_ms, 99),
        }


class _Client:
    def __init__(self, url: str, subscribers: dict[str, str], auditor: str, stats: _Stats) -> None:
        import httpx2

        self.http = httpx2.Client(base_url=url, timeout=30.0)
        self.subscribers = subscribers
        self.auditor = auditor
        self.cursors: dict[str, str | None] = dict.fromkeys(subscribers)
        self.stats = stats
        self.turn = 0

    def _get(self, path: str, token: str, params: dict[str, Any], into: list[float]) -> Any:
        t0 = time.perf_counter()
        try:
            r = self.http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        except Exception as exc:  # counted, not fatal: the benchmark reports it
            self.stats.errors[type(exc).__name__] += 1
            return None
        into.append((time.perf_counter() - t0) * 1000.0)
        self.stats.statuses[f"{path} {r.status_code}"] += 1
        return r.json() if r.status_code == 200 else None

    def pull(self) -> None:
        """Each subscriber's views since its cursor, page by page."""
        for sub, token in self.subscribers.items():
            for _ in range(MAX_PAGES):
                params: dict[str, Any] = {"limit": PAGE}
                if self.cursors[sub] is not None:
                    params["after"] = self.cursors[sub]
                page = self._get("/v1/records", token, params, self.stats.pull_ms)
                self.stats.pulls += 1
                if page is None:
                    break
                self.stats.views += len(page["records"])
                self.cursors[sub] = page["next"]
                if not page["more"]:
                    break

    def audit(self) -> None:
        """One audit query, the next of three kinds."""
        subs = list(self.subscribers)
        sub = subs[self.turn % len(subs)]
        kind = self.turn % 3
        self.turn += 1
        if kind == 0:
            since = datetime.now(UTC) - timedelta(minutes=1)
            params: dict[str, Any] = {"since": since.isoformat(), "limit": 100}
        elif kind == 1:
            params = {"subscriber": sub, "decision": "blocked", "limit": 100}
        else:
            params = {"subscriber": sub, "limit": 100}
        page = self._get("/v1/audit/entries", self.auditor, params, self.stats.audit_ms)
        self.stats.audits += 1
        if page is not None:
            self.stats.entries += len(page["entries"])


def api_client_main(
    conn: Connection,
    url: str,
    subscribers: dict[str, str],
    auditor: str,
    pull_every_s: float,
    audit_per_s: float,
) -> None:
    """Run the client against ``url`` until told to stop (see the module docstring)."""
    stats = _Stats()
    client = _Client(url, subscribers, auditor, stats)
    started = time.monotonic()
    next_pull = started
    audit_every = 1.0 / audit_per_s if audit_per_s > 0 else float("inf")
    next_audit = started
    conn.send(("ready",))
    try:
        while True:
            now = time.monotonic()
            if now >= next_pull:
                client.pull()
                next_pull += pull_every_s
                next_pull = max(next_pull, time.monotonic())  # no burst after a slow round
            if now >= next_audit:
                client.audit()
                next_audit += audit_every
                next_audit = max(next_audit, time.monotonic())
            wait = max(0.0, min(next_pull, next_audit) - time.monotonic())
            if conn.poll(wait):
                cmd = conn.recv()
                if cmd[0] == "stop":
                    conn.send(("stopped", stats.summary(time.monotonic() - started)))
                    return
                conn.send(("error", f"unknown command {cmd[0]!r}"))
    except Exception as exc:  # the benchmark reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        client.http.close()
