"""Whether the store takes writes, and the back-off while it does not.

A store that fails (a full disk, a database that does not answer) is a state the gateway
lives through, not an error it dies of: the pipeline keeps the batch in hand unacknowledged
(the broker keeps it and everything after it), retries with a growing delay, and resumes by
itself. This class is the one place that says so: one log line when the store starts
failing, one when it takes writes again, a reminder every :data:`REMIND_EVERY_S` while it
does not, the ``icvgw_store_ok`` gauge and the one-line :meth:`StoreHealth.status`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.errors import StoreError
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["StoreHealth"]

RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
REMIND_EVERY_S = 60.0


class StoreHealth:
    """The store's state as the pipeline sees it: ok, or failing since when and why."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        min_delay: float = RETRY_MIN_S,
        max_delay: float = RETRY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.clock = clock
        self.ok = True
        self.reason: str | None = None
        self.since: float | None = None
        self.attempts = 0
        self._reminded = 0.0
        metrics.store_ok.set(1)

    @property
    def delay(self) -> float:
        """Seconds to wait before the next attempt (0 while the store is ok)."""
        if self.ok:
            return 0.0
        return float(min(self.max_delay, self.min_delay * 2 ** max(self.attempts - 1, 0)))

    def failed(self, exc: StoreError, *, held: int = 0) -> None:
        """A store operation failed; ``held`` input messages wait unacknowledged."""
        now = self.clock()
        self.attempts += 1
        self.metrics.store_failures.inc()
        self.metrics.store_ok.set(0)
        reason = str(exc)
        if self.ok:
            self.ok, self.since, self._reminded = False, now, now
            log.error(
                "store failing: %s; input is not acknowledged (the broker keeps it), "
                "retrying every %.1f-%.0f s",
                reason,
                self.min_delay,
                self.max_delay,
            )
        elif reason != self.reason or now - self._reminded >= REMIND_EVERY_S:
            self._reminded = now
            log.error("%s; %d messages held unacknowledged", self.status(), held)
        self.reason = reason

    def succeeded(self) -> None:
        """A store write went through: resume."""
        if not self.ok:
            assert self.since is not None
            log.warning(
                "store takes writes again after %.0f s (%d attempts): resuming",
                self.clock() - self.since,
                self.attempts,
            )
        self.ok, self.reason, self.since, self.attempts = True, None, None, 0
        self.metrics.store_ok.set(1)

    def status(self) -> str:
        """One line: ``store ok`` or ``store failing for N s: reason``."""
        if self.ok or self.since is None:
            return "store ok"
        return f"store failing for {self.clock() - self.since:.0f} s: {self.reason}"
