"""An API on a store the real pipeline has written: a simulated fleet's messages, decided
by :class:`gateway.service.Gateway` (no broker: ``process`` is called directly), audited,
dead-lettered and checkpointed, then served by a fresh app on the same store and keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gateway.api import create_app
from gateway.api.context import open_context
from gateway.apikeys import Role
from gateway.model import Envelope
from gateway.service import Gateway
from simulators.fleet import Fleet, FleetConfig
from tests.api.conftest import Api, api_config

NOT_JSON = b"{not json"


@dataclass
class Fed:
    """The API, the gateway deciding on the same store, and what it was given."""

    api: Api
    gateway: Gateway
    envelopes: list[Envelope]
    auditor: dict[str, str] = field(default_factory=dict)
    admin: dict[str, str] = field(default_factory=dict)
    """Headers with an auditor's and an admin's key (made before the run: its checkpoint
    covers their ``apikey.created`` entries)."""

    @property
    def vins(self) -> set[str]:
        """The VINs of the fleet (from the topics)."""
        return {e.topic.split("/")[1] for e in self.envelopes}

    def run(self, envelopes: list[Envelope], *, checkpoint: bool = True) -> None:
        """Decide envelopes on the API's store in batches of 200, then sign a checkpoint."""
        for i in range(0, len(envelopes), 200):
            self.gateway.process(envelopes[i : i + 200])
        if checkpoint:
            self.gateway.audit.checkpoint()


def fleet_envelopes(
    vehicles: int, seconds: float, *, seed: int = 3, minutes_ago: float = 10
) -> list[Envelope]:
    """A fleet's messages from ``minutes_ago``, and every 50th message replaced by one
    that is not JSON (dead-lettered, ``not-json``). The same ``seed`` is the same vehicles;
    a later start gives them new records."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    first = round((10 - minutes_ago) * 60) + 1_000_000  # msg_ids not used before
    config = FleetConfig(vehicles=vehicles, start=start, first_seq=first)
    msgs = Fleet(config, seed=seed).messages(seconds, 1.0)
    out = []
    for i, m in enumerate(msgs):
        payload = NOT_JSON + str(i).encode() if i % 50 == 49 else m.payload
        out.append(Envelope(m.topic, payload, 0.0, i + 1))
    return out


@contextmanager
def fed_api(
    tmp_path: Path, vehicles: int = 8, seconds: float = 20, **overrides: Any
) -> Iterator[Fed]:
    """The pipeline run on a fleet, then the API on its store."""
    config = api_config(tmp_path, **overrides)
    envelopes = fleet_envelopes(vehicles, seconds)
    gw = Gateway(config)
    gw.audit.publisher = None  # no broker: checkpoints are kept, not published
    try:
        ctx = open_context(config)
        try:
            with TestClient(create_app(ctx, sinks=False)) as client:
                api = Api(ctx, client)
                fed = Fed(api, gw, envelopes)
                fed.auditor = api.headers(api.key(Role.AUDITOR))
                fed.admin = api.headers(api.key(Role.ADMIN))
                fed.run(envelopes)
                yield fed
        finally:
            ctx.close()
    finally:
        gw.store.close()
