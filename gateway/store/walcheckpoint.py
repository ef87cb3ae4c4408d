"""Checkpoints a SQLite write-ahead log from a thread of its own.

By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages: that
commit copies the log into the database file and syncs it before it returns. With a few
kilobytes written per message, that happened about once a second under load and stalled the
micro-batch that hit it (``bench/RESULTS.md``, End to end). A writing store turns the
automatic checkpoint off and runs this instead: a passive checkpoint every ``every_s`` on a
second connection, which copies what readers no longer need without blocking writers (the
sqlite3 module releases the GIL while it runs).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

__all__ = ["WalCheckpointer"]


class WalCheckpointer:
    """Passive WAL checkpoints of the database at ``path`` every ``every_s`` seconds."""

    def __init__(self, path: str, every_s: float = 0.25, restart_frames: int = 2048) -> None:
        self.path = path
        self.every_s = every_s
        self.restart_frames = restart_frames
        self.runs = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="icvgw-wal-checkpoint", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, log frames, frames checkpointed).

        A passive checkpoint never resets the log: the writer restarts it from the top only
        when every frame is copied at the moment it begins a transaction, which a steady
        stream of commits rarely allows, so the file would grow for good. Once the log
        holds more than ``restart_frames`` and a passive pass has copied nearly all of it,
        a restart checkpoint copies the rest and has the next writer start over; it holds
        writers back only for those last frames.
        """
        busy, frames, done = conn.execute("pragma wal_checkpoint(passive)").fetchone()
        self.runs += 1
        if frames > self.restart_frames and frames - done < self.restart_frames // 8:
            busy, frames, done = conn.execute("pragma wal_checkpoint(restart)").fetchone()
            self.restarts += 1
        return int(busy), int(frames), int(done)

    def _run(self) -> None:
        try:
            # No busy wait: a checkpoint that would have to wait for the writer is simply
            # tried again next time (SQLite's busy handler sleeps in steps of up to 100 ms,
            # and a restart checkpoint holds writers back while it waits).
            conn = sqlite3.connect(self.path, timeout=0.0, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoints of %s not started: %s", self.path, exc)
            return
        failing: str | None = None  # said once, not four times a second (a full disk)
        try:
            while not self._stop.wait(self.every_s):
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as exc:
                    if str(exc) != failing:
                        log.warning("WAL checkpoints of %s failing: %s", self.path, exc)
                    failing = str(exc)
                    continue
                if failing is not None:
                    log.info("WAL checkpoints of %s succeed again", self.path)
                    failing = None
        finally:
            conn.close()
