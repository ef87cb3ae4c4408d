"""The pipeline's stages in flow order: decode, batch, classify, geo, decide, shape.

One module per stage; this one only calls them in order:

* :func:`decode_envelopes` — :mod:`~gateway.pipeline.decode` under the bundle's ingest
  rules;
* :func:`gateway.pipeline.batch.prepare` — the batch stage, which reads the store (the
  caller opens the snapshot);
* :func:`decide_pending` — :func:`evaluate` (classify, geo, decide, shape) on the batch's
  fresh records, the state after it, and what the commit writes of it (:class:`Decided`).

Nothing here writes: the service commits what :func:`decide_pending` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from gateway.model import Batch, Envelope
from gateway.pipeline.batch import Pending
from gateway.pipeline.classify import classify
from gateway.pipeline.decide import Decisions, decide, plan
from gateway.pipeline.decode import MAX_CELLS, Decoded, decode
from gateway.pipeline.geo import locate
from gateway.pipeline.shape import PseudonymKeys, Shaped, shape
from gateway.policy.bundle import PolicyBundle
from gateway.state.snapshot import CounterKey, CrossBorderCount, StateDelta, StateSnapshot
from gateway.vehicle_state import documents

__all__ = ["Decided", "decide_pending", "decode_envelopes", "evaluate"]


@dataclass(frozen=True, slots=True)
class Decided:
    """One decision of a batch: the ``state`` it was decided on (with the cross-border
    counts read), the engine's output, the state after it, the vehicle documents to store
    and the subjects it counts per (recipient, year, category)."""

    state: StateSnapshot
    decisions: Decisions | None
    shaped: Shaped | None
    delta: StateDelta
    new_state: StateSnapshot
    vehicle_docs: dict[str, bytes]
    crossborder: dict[tuple[str, int, str], list[str]]


def decode_envelopes(envelopes: Sequence[Envelope], bundle: PolicyBundle, now: float) -> Decoded:
    """Decode under ``bundle``'s ingest rules: its aliases and limits, and the window of
    record times accepted at ``now``."""
    ingest = bundle.rules.ingest
    return decode(
        envelopes,
        aliases=bundle.aliases,
        max_payload=ingest.max_payload_bytes,
        max_records=ingest.max_records_per_payload,
        check_digit=ingest.verify_vin_check_digit,
        window=(now - ingest.max_age_s, now + ingest.max_future_s),
        max_cells=MAX_CELLS,
    )


def evaluate(
    batch: Batch,
    bundle: PolicyBundle,
    state: StateSnapshot,
    keys: PseudonymKeys,
    subscribers: Iterable[str] | None = None,
) -> tuple[Decisions, Shaped]:
    """Run classify, geo, decide and shape on ``batch`` for decision time ``state.now``.

    The whole policy path of the pipeline in one call (the service, ``policy explain`` and
    the benchmark use it); ``subscribers`` limits it to some subscribers.
    """
    the_plan = plan(bundle, state.now, subscribers)
    classified = classify(batch, bundle)
    located = locate(batch, bundle.zones, the_plan.grids)
    decisions = decide(batch, classified, located, the_plan, state)
    return decisions, shape(decisions, keys)


def decide_pending(
    p: Pending,
    counts: dict[CounterKey, CrossBorderCount],
    *,
    keys: PseudonymKeys,
    vehicle_ref: Callable[[str], str],
) -> Decided:
    """Decide ``p``'s records on the cross-border ``counts`` given (nothing written)."""
    now = p.base.now
    state = replace(p.base, crossborder=counts)
    decisions = shaped = None
    if len(p.work):
        decisions, shaped = evaluate(p.work, p.bundle, state, keys)
        delta = decisions.delta
        new_state = state.apply(delta, shaped.held, now=now)
    else:
        delta = StateDelta()
        new_state = replace(state, now=now)
    touched = set(p.work.vehicle.tolist())
    touched.update(h.vehicle for h in delta.released)
    touched.update(h.vehicle for h in delta.discarded)
    crossborder: dict[tuple[str, int, str], list[str]] = {}
    for sub, year, data_class, vin in delta.counted:
        crossborder.setdefault((sub, year, data_class.value), []).append(vehicle_ref(vin))
    docs = documents(new_state, touched)
    return Decided(state, decisions, shaped, delta, new_state, docs, crossborder)
