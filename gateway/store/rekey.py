"""Re-sealing under the newest store key (after ``icvgw keys rotate``).

The sealed columns are those the tables' repositories declare (``SEALED``); a value is
opened with the key of its generation and sealed again, bound to the same row.
"""

from __future__ import annotations

from gateway.store import deadletters, outbox, vehicle_states
from gateway.store.cursor import WriteSession
from gateway.store.sealing import row_aad

_SEALED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    vehicle_states.SEALED,
    outbox.SEALED,
    deadletters.SEALED,
)


def reseal(tx: WriteSession, generation: int) -> int:
    """Seal again, with the newest store key, every value sealed with an older one;
    ``generation`` is the newest. Returns how many values. Once it has run, no row needs an
    older store key."""
    from gateway.keys import KeyRing

    keys = tx.at_rest()
    count = 0
    for table, key, column in _SEALED:
        select = f"select {', '.join(key)}, {column} from {table} order by {', '.join(key)}"
        where = " and ".join(f"{k} = ?" for k in key)
        for rows in tx.pages(select, len(key)):
            fresh = []
            for r in rows:
                blob = bytes(r[-1])
                if KeyRing.sealed_generation(blob) >= generation:
                    continue
                aad = row_aad(table, *r[:-1])
                fresh.append((keys.seal(keys.unseal(blob, aad), aad), *r[:-1]))
            if fresh:
                tx.execute_many(f"update {table} set {column} = ? where {where}", fresh)
                count += len(fresh)
    return count
