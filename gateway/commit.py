"""Commit: one store transaction per micro-batch, built from the pipeline's results.

Everything a batch changes is written here, together: the audit entries (one per record ×
subscriber decision, one per dead letter, one per held view released or discarded), the
outbox rows (the exact bytes each subscriber will receive), the dead-letter payloads, the
records seen (de-duplication) and the vehicles' decision state. Only after this commit
returns may the input messages be acknowledged.

The bytes of a view carry its audit sequence number, and its audit entry carries a keyed
digest of those bytes; both are fixed inside the transaction, where the shard's head is
locked. The numbers are the audit table's (:class:`~gateway.store.audit.AuditBatch`): each
entry gets its number when it is added, and the append refuses a batch numbered otherwise.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.model import DeadInput
from gateway.pipeline.decide import Decisions, Verdict
from gateway.pipeline.shape import Shaped, encode_view, message_ids
from gateway.policy.bundle import PolicyBundle
from gateway.state.snapshot import HeldView, unpacked
from gateway.store import Transaction
from gateway.store.audit import AuditBatch
from gateway.store.deadletters import DeadLetterRow, add_deadletters
from gateway.store.dedup import add_seen
from gateway.store.outbox import OutboxRow, add_outbox
from gateway.store.vehicle_states import save_vehicle_state
from gateway.tlog.entries import Decision, DecisionEntry

_AUDIT_DECISION = {
    Verdict.SHARE: Decision.SHARED,
    Verdict.REDACT: Decision.REDACTED,
    Verdict.BLOCK: Decision.BLOCKED,
}
_HELD_DECISION = {"share": Decision.SHARED, "redact": Decision.REDACTED}


@dataclass(slots=True)
class Written:
    """What one commit wrote, for metrics and the demo's summary."""

    entries: int = 0
    views: int = 0
    deadletters: int = 0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    outbox: list[OutboxRow] = field(default_factory=list)
    counted: dict[tuple[str, int, str], int] = field(default_factory=dict)

    def merged(self, other: Written) -> Written:
        """Both commits' figures (a batch committed in parts)."""
        counted = dict(self.counted)
        for key, n in other.counted.items():
            counted[key] = counted.get(key, 0) + n
        return Written(
            self.entries + other.entries,
            self.views + other.views,
            self.deadletters + other.deadletters,
            self.decisions + other.decisions,
            self.outbox + other.outbox,
            counted,
        )


@dataclass(frozen=True, slots=True)
class Context:
    """What the commit needs besides the batch's results."""

    shard: str
    instance: str
    now: float
    bundle: PolicyBundle
    vehicle_ref: Callable[[str], str]
    digest: Callable[[bytes], str]
    pseudonym_key: Callable[[str], bytes]
    deadletter_prefix: str
    topic_prefix: str = "share"


TOPIC_KEEP_CHARS = 128
"""A dead letter keeps at most this much of its topic (``vehicles/<VIN>/telemetry`` is 36)."""


def kept_topic(topic: str) -> str:
    """What a dead letter keeps of its topic: all of it up to :data:`TOPIC_KEEP_CHARS`
    characters, else a prefix and the length (a topic may be 64 KB of anything)."""
    if len(topic) <= TOPIC_KEEP_CHARS:
        return topic
    head = TOPIC_KEEP_CHARS - 32
    return f"{topic[:head]}...[{len(topic)} characters]"


def kept_payload(payload: bytes, digest: str, *, whole_up_to: int, prefix_bytes: int) -> bytes:
    """What a dead letter keeps of its payload: all of it up to ``whole_up_to`` bytes (the
    payload limit), else a summary of the oversize payload: its size, its keyed digest and its
    first ``prefix_bytes`` bytes (base64). The caller keeps a payload once per message,
    however many of its records are dead."""
    if len(payload) <= whole_up_to:
        return payload
    prefix = base64.b64encode(payload[:prefix_bytes]).decode("ascii")
    return orjson.dumps({"size": len(payload), "digest": digest, "prefix_base64": prefix})


def view_topic(
    bundle: PolicyBundle, subscriber: str, view: Mapping[str, Any], prefix: str = "share"
) -> str:
    """``<subscriber's topic>/<vehicle pseudonym>/telemetry`` (``anonymous`` without one);
    a subscriber without an MQTT topic of its own has ``<prefix>/<subscriber id>``."""
    delivery = bundle.subscribers[subscriber].view.delivery
    base = delivery.topic or f"{prefix}/{subscriber}"
    vehicle = view.get("vehicle") or "anonymous"
    return f"{base}/{vehicle}/telemetry"


def channel_of(bundle: PolicyBundle, subscriber: str) -> str:
    """The delivery channel of ``subscriber``'s views (``mqtt``, ``http_stream``,
    ``webhook``): which sink takes its outbox rows."""
    return bundle.subscribers[subscriber].view.delivery.channel.value


def commit_batch(
    tx: Transaction,
    ctx: Context,
    *,
    dead: Sequence[DeadInput],
    decisions: Decisions | None,
    shaped: Shaped | None,
    released: Sequence[HeldView],
    discarded: Sequence[HeldView],
    seen: Sequence[tuple[str, str]],
    vehicle_states: Mapping[str, bytes],
    crossborder: Mapping[tuple[str, int, str], list[str]],
) -> Written:
    """Write one batch in ``tx`` (see the module docstring); returns what was written."""
    out = Written()
    entries = tx.audit_batch(ctx.shard)
    outbox: list[OutboxRow] = []
    letters: list[DeadLetterRow] = []
    now_ms = round(ctx.now * 1000)

    def share(
        sub: str, decision: Decision, msg: str, view: Mapping[str, Any], entry: dict[str, Any]
    ) -> None:
        data = encode_view(view, audit_seq=entries.next_seq, message_id=msg)
        seq = entries.add(DecisionEntry(digest=ctx.digest(data), **entry))
        topic = view_topic(ctx.bundle, sub, view, ctx.topic_prefix)
        outbox.append(OutboxRow(seq, sub, topic, msg, data, now_ms, channel_of(ctx.bundle, sub)))
        out.decisions[(sub, decision.value)] += 1

    _dead_letters(ctx, dead, entries, outbox, letters, out, now_ms)
    for h in released:
        sub = ctx.bundle.subscribers.get(h.subscriber)
        decision = _HELD_DECISION[h.decision]
        share(
            h.subscriber,
            decision,
            h.message_id,
            unpacked(h.view),
            _held_entry(ctx, h, decision, sub.region if sub else None),
        )
    for h in discarded:
        sub = ctx.bundle.subscribers.get(h.subscriber)
        entries.add(
            DecisionEntry(**_held_entry(ctx, h, Decision.BLOCKED, sub.region if sub else None))
        )
        out.decisions[(h.subscriber, Decision.BLOCKED.value)] += 1

    if decisions is not None and shaped is not None:
        _decisions(ctx, decisions, shaped, entries, outbox, out, now_ms)

    tx.append_batch(entries)
    add_outbox(tx, ctx.shard, outbox)
    add_deadletters(tx, ctx.shard, letters)
    add_seen(tx, seen, now_ms)
    save_vehicle_state(tx, dict(vehicle_states), now_ms)
    for (recipient, year, category), refs in crossborder.items():
        tx.lock_crossborder(recipient, year)
        out.counted[(recipient, year, category)] = tx.add_crossborder_subjects(
            recipient, year, refs, category=category, at=ctx.now
        )
    out.entries = len(entries.entries)
    out.outbox = outbox
    out.views = sum(1 for r in outbox if r.subscriber)
    out.deadletters = len(letters)
    return out


def _dead_letters(
    ctx: Context,
    dead: Sequence[DeadInput],
    entries: AuditBatch,
    outbox: list[OutboxRow],
    letters: list[DeadLetterRow],
    out: Written,
    now_ms: int,
) -> None:
    """Audit, keep and announce each dead input; a payload is kept (and digested) once, with
    the first of its dead records, however many there are."""
    digests: dict[bytes, str] = {}  # one keyed digest per payload, however many bad records
    ingest = ctx.bundle.rules.ingest
    for d in dead:
        first = d.payload not in digests
        if first:
            digests[d.payload] = ctx.digest(d.payload)
        digest = digests[d.payload]
        seq = entries.add(
            DecisionEntry(
                time=d.time,
                instance=ctx.instance,
                message_id=d.message_id,
                decision=Decision.DEAD_LETTERED,
                policy=ctx.bundle.version,
                vehicle=d.vehicle_ref,
                digest=digest,
                reason=d.reason,
                rules=("input.invalid",),
            )
        )
        kept = b""
        if first:
            kept = kept_payload(
                d.payload,
                digest,
                whole_up_to=ingest.max_payload_bytes,
                prefix_bytes=ingest.oversize_keep_bytes,
            )
        letters.append(DeadLetterRow(seq, now_ms, d.reason, kept_topic(d.topic), kept))
        # No vehicle reference in the notice: a stable one would link trips that per-trip
        # pseudonyms keep apart; the audit entry at ``audit_seq`` has it for the operator.
        notice = orjson.dumps({"reason": d.reason, "digest": digest, "audit_seq": seq})
        outbox.append(
            OutboxRow(seq, "", f"{ctx.deadletter_prefix}/{d.reason}", d.message_id, notice, now_ms)
        )
        out.decisions[("", Decision.DEAD_LETTERED.value)] += 1


def _held_entry(
    ctx: Context, h: HeldView, decision: Decision, region: str | None
) -> dict[str, Any]:
    precision = None if h.precision_m is None else round(h.precision_m)
    rules = h.rules if decision is not Decision.BLOCKED else (*h.rules, "pi.trip-trim")
    return {
        "time": h.time,
        "instance": ctx.instance,
        "message_id": h.message_id,
        "decision": decision,
        "policy": ctx.bundle.version,
        "vehicle": ctx.vehicle_ref(h.vehicle),
        "subscriber": h.subscriber,
        "region": region,
        "rules": tuple(dict.fromkeys(rules)),
        "transforms": unpacked(h.transforms),
        "precision_m": precision if decision is not Decision.BLOCKED else None,
        "basis": h.basis,
    }


def _message_ids(
    ctx: Context,
    sub_id: str,
    rows: list[int],
    vehicles: list[Any],
    record_ids: list[Any],
    times: list[Any],
) -> dict[int, str]:
    """The message ids, by row, of decisions that have no shaped view (blocked ones)."""
    ids = message_ids(
        ctx.pseudonym_key(sub_id),
        sub_id,
        [vehicles[r] for r in rows],
        [record_ids[r] for r in rows],
        [times[r] for r in rows],
    )
    return dict(zip(rows, ids, strict=True))


def _decisions(
    ctx: Context,
    decisions: Decisions,
    shaped: Shaped,
    entries: AuditBatch,
    outbox: list[OutboxRow],
    out: Written,
    now_ms: int,
) -> None:
    batch = decisions.batch
    n = len(batch)
    views = decisions.plan.views
    refs = [ctx.vehicle_ref(v) for v in batch.vehicle.tolist()]
    vehicles = batch.vehicle.tolist()
    record_ids = batch.msg_id.tolist() if batch.msg_id is not None else [None] * n
    times = batch.time.tolist()
    instance, policy = ctx.instance, ctx.bundle.version
    for s, view in enumerate(views):
        sub_id = view.id
        region = ctx.bundle.subscribers[sub_id].region
        # Per row: the index of its shaped view (-1: none), then every entry column at once.
        view_of = np.full(n, -1, dtype=np.intp)
        mine = np.flatnonzero(shaped.subscriber == s)
        view_of[shaped.row[mine]] = mine
        verdicts = decisions.verdict[s]
        rows = np.flatnonzero(verdicts != Verdict.HELD)
        if rows.size == 0:
            continue
        unshaped = rows[view_of[rows] < 0].tolist()
        ids = _message_ids(ctx, sub_id, unshaped, vehicles, record_ids, times)
        precision = np.where(decisions.position[s, rows], view.grid_m, np.nan)
        columns = zip(
            rows.tolist(),
            verdicts[rows].tolist(),
            decisions.rules_of(s, rows),
            decisions.transforms_of(s, rows),
            [None if math.isnan(p) else round(p) for p in precision.tolist()],
            decisions.bases_of(s, rows),
            view_of[rows].tolist(),
            strict=True,
        )
        counts = out.decisions
        for row, verdict, rules, transforms, precision_m, basis, index in columns:
            decision = _AUDIT_DECISION[Verdict(verdict)]
            common = {
                "time": times[row],
                "instance": instance,
                "decision": decision,
                "policy": policy,
                "vehicle": refs[row],
                "subscriber": sub_id,
                "region": region,
                "rules": rules,
                "transforms": transforms,
                "precision_m": precision_m,
                "basis": basis,
            }
            counts[(sub_id, decision.value)] += 1
            if index < 0:
                entries.add(DecisionEntry(message_id=ids[row], **common))
                continue
            msg = shaped.message_ids[index]
            data = encode_view(shaped.views[index], audit_seq=entries.next_seq, message_id=msg)
            seq = entries.add(DecisionEntry(message_id=msg, digest=ctx.digest(data), **common))
            outbox.append(
                OutboxRow(
                    seq,
                    sub_id,
                    view_topic(ctx.bundle, sub_id, shaped.views[index], ctx.topic_prefix),
                    msg,
                    data,
                    now_ms,
                    channel_of(ctx.bundle, sub_id),
                )
            )
