"""What each subscriber would receive for a record, and why (``icvgw policy explain``).

:func:`explain` runs the real pipeline (decode, classify, geo, decide, shape) on a record as a
vehicle would publish it — one JSON object, or a JSON array of them read as a trace — with a
fresh state: the bundle's seed consents, no down-sampling history, no cross-border counts.
Nothing is written anywhere.

Trips. By default each vehicle is taken to be *mid-trip*: it left its trip's start long ago,
so trip-start trimming does not withhold the first record. Trip-end trimming still applies:
a view that trims the last ``N`` metres of trips holds a record back until the vehicle has
moved ``N`` metres on, so the last records of the input are reported as *held*, with the
output they will have when released (``pi.trip-trim`` is among their rules). With
``trip_start=True`` the first record of each vehicle starts a trip instead.

Pseudonyms and message ids are keyed per subscriber: with a key ring they are the ones the
gateway sends; without one they come from an ephemeral key and match nothing real.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import KeyStoreError
from gateway.keys import KeyRing
from gateway.model import Batch, Envelope
from gateway.pipeline.decide import Decisions, Verdict
from gateway.pipeline.decode import DeadLetter, decode
from gateway.pipeline.run import evaluate
from gateway.pipeline.shape import PseudonymKeys, Shaped, ephemeral_keys
from gateway.policy.bundle import PolicyBundle
from gateway.state.snapshot import ConsentBook, StateSnapshot, TripState, unpacked

__all__ = ["Explained", "Explanation", "explain", "parse_time", "run_explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """One record for one subscriber.

    ``decision`` is ``"share"``, ``"redact"`` or ``"block"``; a ``held`` record is reported
    with the decision it gets when released. ``output`` is the object the subscriber would
    receive (with its ``message_id``; ``audit_seq`` is assigned when the gateway commits),
    ``None`` when blocked. ``reason`` says why an unusable record was rejected.
    """

    record: int
    subscriber: str
    decision: str
    held: bool
    rules: tuple[str, ...]
    precision_m: float | None
    datum: str | None
    reason: str | None
    transforms: dict[str, Any]
    output: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        """``{"subscriber", "decision", "rules", "output"}``: the ``--format json`` item."""
        return {
            "subscriber": self.subscriber,
            "decision": self.decision,
            "rules": list(self.rules),
            "output": self.output,
        }


@dataclass(frozen=True, slots=True)
class Explained:
    """The explanations of an input, record by record then subscriber by subscriber.

    ``dead`` is set when the whole input is unusable (not JSON, not an object or array, an
    empty array): then there are no explanations. ``ephemeral`` says the pseudonyms come from
    a throw-away key.
    """

    items: tuple[Explanation, ...]
    records: int
    now: float
    ephemeral: bool
    dead: DeadLetter | None = None
    trip_trim: dict[str, float] = field(default_factory=dict)


def explain(
    bundle: PolicyBundle,
    payload: bytes,
    *,
    subscribers: Iterable[str] | None = None,
    keys: KeyRing | PseudonymKeys | None = None,
    at: float | None = None,
    trip_start: bool = False,
) -> Explained:
    """Explain ``payload`` (JSON bytes, as a vehicle publishes) for the bundle's subscribers.

    ``at`` is the decision time (Unix seconds; default: the latest record time, or now if
    none has one): qualifications, authorisations and legal bases are checked on its date.
    Raises ``KeyError`` for an unknown subscriber id. Never raises on the payload's content.
    """
    decoded = decode(
        [Envelope(topic="", payload=payload, received_at=0.0)],
        aliases=bundle.aliases,
        max_payload=bundle.rules.ingest.max_payload_bytes,
        vehicle_from_topic=None,
        check_digit=bundle.rules.ingest.verify_vin_check_digit,
    )
    ephemeral = keys is None
    key_fn = _key_function(keys)
    batch = decoded.batch
    times = batch.time[batch.ok]
    if at is None:
        at = float(times.max()) if times.size else _wall_clock()
    wanted = list(bundle.subscribers) if subscribers is None else list(subscribers)
    for sub_id in wanted:
        bundle.subscribers[sub_id]  # KeyError for an unknown id
    if decoded.dead:
        return Explained((), 0, at, ephemeral, decoded.dead[0])
    trips = {} if trip_start else _mid_trip(batch)
    state = StateSnapshot(now=at, consents=ConsentBook.from_policy(bundle.consents), trips=trips)
    decisions, shaped = evaluate(batch, bundle, state, key_fn, wanted)
    return Explained(
        tuple(_explanations(len(batch), decisions, _outputs(shaped))),
        len(batch),
        at,
        ephemeral,
        None,
        {v.id: v.subscriber.view.trip_trim_m for v in decisions.plan.views},
    )


def _key_function(keys: KeyRing | PseudonymKeys | None) -> PseudonymKeys:
    if keys is None:
        return ephemeral_keys()
    if isinstance(keys, KeyRing):
        return keys.pseudonym_key
    return keys


def _mid_trip(batch: Batch) -> dict[str, TripState]:
    """Each vehicle's trip, started long before its first record and far from it."""
    trips: dict[str, TripState] = {}
    for vin in {v for v, ok in zip(batch.vehicle, batch.ok, strict=True) if ok}:
        first = float(batch.time[(batch.vehicle == vin) & batch.ok].min())
        trips[vin] = TripState(
            start_time=first - 1.0,
            start_lat=math.nan,
            start_lon=math.nan,
            max_disp_m=math.inf,
            last_time=first - 1.0,
            last_lat=math.nan,
            last_lon=math.nan,
            ended=False,
        )
    return trips


def _outputs(shaped: Shaped) -> dict[tuple[int, int], dict[str, Any]]:
    """The object each (subscriber, row) receives, sent now or held, with its message id."""
    outputs: dict[tuple[int, int], dict[str, Any]] = {}
    for s, row, obj, mid in zip(
        shaped.subscriber.tolist(),
        shaped.row.tolist(),
        shaped.views,
        shaped.message_ids,
        strict=True,
    ):
        outputs[(s, row)] = {**obj, "message_id": mid}
    for pending, s, row in zip(
        shaped.held, shaped.held_subscriber.tolist(), shaped.held_row.tolist(), strict=True
    ):
        outputs[(s, row)] = {**unpacked(pending.view), "message_id": pending.message_id}
    return outputs


def _explanations(
    rows: int, decisions: Decisions, outputs: dict[tuple[int, int], dict[str, Any]]
) -> Iterator[Explanation]:
    """One explanation per record and subscriber; a held record with its later decision."""
    for row in range(rows):
        for view in decisions.plan.views:
            s = view.index
            verdict = Verdict(int(decisions.verdict[s, row]))
            held = verdict is Verdict.HELD
            if held:
                verdict = Verdict.REDACT if decisions.redacted[s, row] else Verdict.SHARE
            datum = decisions.datum(s, row)
            yield Explanation(
                record=row,
                subscriber=view.id,
                decision=verdict.label,
                held=held,
                rules=decisions.rule_ids(s, row),
                precision_m=decisions.precision_m(s, row),
                datum=datum.label if decisions.position[s, row] else None,
                reason=decisions.reason(row),
                transforms=decisions.transforms(s, row),
                output=outputs.get((s, row)),
            )


def _wall_clock() -> float:
    return time.time()


# --- the command ------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: ISO 8601 with a UTC offset, or a number of seconds.

    Raises ``ValueError`` for anything else (a time without an offset is ambiguous).
    """
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2025-06-01T08:00:00+08:00)")
    return parsed.timestamp()


def run_explain(
    bundle: PolicyBundle,
    record: Path,
    *,
    subscribers: list[str] | None = None,
    keys: Path | None = None,
    at: str | None = None,
    output_format: str = "table",
    trip_start: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``icvgw policy explain`` and return its exit status.

    0: explained (whatever the decisions); 1: the record file, the key directory or the
    input as a whole is unusable; 2: a bad option (unknown subscriber, format or time).
    """
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    if output_format not in ("table", "json"):
        print(f"--format must be table or json, not {output_format!r}", file=stderr)
        return 2
    unknown = [s for s in subscribers or () if s not in bundle.subscribers]
    if unknown:
        known = ", ".join(bundle.subscribers)
        print(f"unknown subscriber {unknown[0]!r}; the bundle has: {known}", file=stderr)
        return 2
    when: float | None = None
    if at is not None:
        try:
            when = parse_time(at)
        except ValueError as exc:
            print(f"--at: {exc}", file=stderr)
            return 2
    try:
        payload = sys.stdin.buffer.read() if str(record) == "-" else record.read_bytes()
    except OSError as exc:
        print(f"{record}: cannot read: {exc.strerror or exc}", file=stderr)
        return 1
    ring = None
    if keys is not None:
        try:
            ring = KeyRing.load(keys)
        except KeyStoreError as exc:
            print(str(exc), file=stderr)
            return 1
    result = explain(
        bundle, payload, subscribers=subscribers or None, keys=ring, at=when, trip_start=trip_start
    )
    if result.dead is not None:
        print(f"{record}: {result.dead.reason}: {result.dead.detail}", file=stderr)
        return 1
    if output_format == "json":
        stdout.write(json.dumps([i.as_json() for i in result.items], ensure_ascii=False, indent=2))
        stdout.write("\n")
        if result.ephemeral:
            print(_EPHEMERAL, file=stderr)
        return 0
    _render(result, bundle, stdout)
    return 0


def _render(result: Explained, bundle: PolicyBundle, stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, soft_wrap=False)
    stamp = datetime.fromtimestamp(result.now, UTC).isoformat().replace("+00:00", "Z")
    console.print(
        f"policy [bold]{bundle.short_version}[/bold] ({bundle.directory}); decided as of {stamp}"
    )
    if result.ephemeral:
        console.print(_EPHEMERAL)
    many = result.records > 1
    table = Table(show_lines=True)
    if many:
        table.add_column("record", justify="right")
    for column in ("subscriber", "decision", "rules", "precision", "datum"):
        table.add_column(column, overflow="fold")
    for item in result.items:
        decision = item.decision
        if item.held:
            decision += " (held)"
        if item.reason:
            decision += f"\n{item.reason}"
        precision = "-"
        if item.precision_m is not None:
            precision = "raw" if item.precision_m == 0 else f"{item.precision_m:g} m"
        cells = [
            item.subscriber,
            _style(item.decision, decision),
            "\n".join(item.rules),
            precision,
            item.datum or "-",
        ]
        table.add_row(*([str(item.record)] if many else []), *cells)
    console.print(table)
    if any(i.held for i in result.items):
        trims = ", ".join(f"{sub} {trim:g} m" for sub, trim in result.trip_trim.items() if trim > 0)
        console.print(
            "held: trip-end trimming keeps a record back until the vehicle has moved on "
            f"({trims}); it is sent when it has, dropped if the trip ends first"
        )
    for item in result.items:
        if item.output is None:
            continue
        label = f"record {item.record}, " if many else ""
        console.rule(f"{label}{item.subscriber}")
        console.print_json(json.dumps(item.output, ensure_ascii=False))


_EPHEMERAL = (
    "pseudonyms and message ids use an ephemeral key (no --keys): they match nothing the "
    "gateway sends"
)


def _style(decision: str, text: str) -> str:
    colour = {"share": "green", "redact": "yellow", "block": "red"}.get(decision, "white")
    return f"[{colour}]{text}[/{colour}]"
