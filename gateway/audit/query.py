"""Reading the log for people: filters, and table / JSON / CSV output."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson
from rich.console import Console
from rich.table import Table

from gateway.store.audit import StoredEntry

COLUMNS = (
    "shard",
    "seq",
    "time",
    "kind",
    "subscriber",
    "region",
    "decision",
    "rules",
    "precision_m",
    "basis",
    "vehicle",
    "policy",
)


def entry_record(e: StoredEntry) -> dict[str, Any]:
    """One entry as a flat record for display (pruned entries show only what is kept)."""
    body: dict[str, Any] = orjson.loads(e.body) if e.body is not None else {}
    decision = body.get("decision") if e.kind == "decision" else body.get("action")
    return {
        "shard": e.shard,
        "seq": e.seq,
        "time": body.get("time"),
        "kind": e.kind if e.body is not None else f"{e.kind} (pruned)",
        "subscriber": body.get("subscriber") if e.kind == "decision" else body.get("subject"),
        "region": body.get("region"),
        "decision": decision,
        "rules": ",".join(body.get("rules") or []),
        "precision_m": body.get("precision_m"),
        "basis": body.get("basis"),
        "vehicle": body.get("vehicle"),
        "policy": body.get("policy"),
        "entry": body or None,
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def render_table(entries: Iterable[StoredEntry], console: Console) -> int:
    """Print a readable table; returns the number of rows."""
    records = [entry_record(e) for e in entries]
    show_shard = len({r["shard"] for r in records}) > 1
    table = Table(show_lines=False, header_style="bold")
    cols = [c for c in COLUMNS if c != "shard" or show_shard]
    for c in cols:
        table.add_column(c, overflow="fold", no_wrap=c in ("time", "seq"))
    for r in records:
        table.add_row(*(_text(r[c]) for c in cols))
    console.print(table)
    console.print(f"{len(records)} entr{'y' if len(records) == 1 else 'ies'}")
    return len(records)


def entry_item(e: StoredEntry) -> dict[str, Any]:
    """One entry as the log holds it: ``{"shard", "seq", "entry", "pruned"}`` (``entry``
    is None once pruned to its hash)."""
    return {
        "shard": e.shard,
        "seq": e.seq,
        "entry": orjson.loads(e.body) if e.body is not None else None,
        "pruned": e.body is None,
    }


def iter_json_lines(entries: Iterable[StoredEntry]) -> Iterator[bytes]:
    """A JSON array, streamed: one :func:`entry_item` per element."""
    yield b"["
    first = True
    for e in entries:
        yield (b"" if first else b",") + b"\n" + orjson.dumps(entry_item(e))
        first = False
    yield b"\n]\n"


def write_csv(entries: Iterable[StoredEntry], out: IO[str]) -> int:
    """Write a CSV with the flat columns; returns the number of rows."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    n = 0
    for e in entries:
        r = entry_record(e)
        writer.writerow([_text(r[c]) for c in COLUMNS])
        n += 1
    return n
