"""Keeping a policy bundle in force while it is edited: reload on change, keep the last good.

:class:`PolicyHolder` loads the bundle once at start (a bundle that does not load then is an
error: no policy, nothing shared) and afterwards swaps in a new bundle only when it loads
completely. A failed reload keeps the bundle in force, logs every problem and keeps the
error in :attr:`PolicyHolder.last_error` until a reload succeeds.

Change detection is exact and cheap: :meth:`poll` compares the files' names, sizes,
modification times and inodes, and hashes their bytes when those changed — and, since
modification times can miss two edits within the file system's timestamp granularity, at
least every :data:`HASH_EVERY` polls anyway (hashing a bundle with 10,000 zones every second
held up a busy gateway's batches: ``bench/RESULTS.md``, End to end). A signal handler
(SIGHUP) must not load a bundle itself: it calls :meth:`request_reload`, which only sets a
flag, and the next :meth:`poll` reloads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.errors import PolicyError, Problem
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.resources import default_policy_dir

__all__ = ["HASH_EVERY", "PolicyHolder", "bundle_fingerprint", "bundle_stat"]

log = logging.getLogger("gateway.policy")

_WATCHED_SUFFIXES = frozenset({".yaml", ".yml", ".json", ".geojson"})


HASH_EVERY = 30
"""Polls between two hashes of unchanged-looking files (the modification-time backstop)."""


def _watched(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in _WATCHED_SUFFIXES)


def bundle_stat(directory: Path) -> tuple[tuple[str, int, int, int], ...] | str:
    """Names, sizes, modification times (ns) and inodes of the policy files in ``directory``
    (an error message if the directory or a file cannot be read)."""
    try:
        out = []
        for path in _watched(directory):
            st = path.stat()
            out.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)
    except OSError as exc:
        return f"unreadable: {exc}"


def bundle_fingerprint(directory: Path) -> str:
    """SHA-256 over the names and bytes of the policy files in ``directory``.

    Changes whenever a bundle file is edited, added or removed; an unreadable directory or
    file changes it too (its error is hashed), so the next reload reports the problem.
    """
    digest = hashlib.sha256()
    try:
        paths = _watched(directory)
    except OSError as exc:
        digest.update(f"unreadable directory: {exc}".encode())
        return digest.hexdigest()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        try:
            size = _hash_file(path, digest)
        except OSError as exc:
            digest.update(f"unreadable: {exc}".encode())
            size = -1
        digest.update(size.to_bytes(8, "big", signed=True))
    return digest.hexdigest()


_CHUNK = 1 << 20


def _hash_file(path: Path, digest: hashlib._Hash) -> int:
    """Feed the file to ``digest`` a chunk at a time; its size in bytes. Reading a large
    zone file whole (and copying it once more) made a memory peak at every hash
    (``bench/RESULTS.md``, peak RSS)."""
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return size


class PolicyHolder:
    """The bundle in force, reloaded on request or when its files change.

    Thread-safe: :attr:`current` can be read from any thread while another reloads.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        loader: Callable[[Path], PolicyBundle] = load_bundle,
    ) -> None:
        """Load the bundle; raises :class:`~gateway.errors.PolicyError` if it does not load."""
        self.directory = Path(directory) if directory is not None else default_policy_dir()
        self._loader = loader
        self._lock = threading.Lock()
        self._requested = threading.Event()
        self._stat = bundle_stat(self.directory)
        self._unhashed_polls = 0
        self._fingerprint = bundle_fingerprint(self.directory)
        self._bundle = loader(self.directory)
        self._loaded = self._bundle.version  # of the last bundle that loaded, in force or not
        self.last_error: PolicyError | None = None
        self.failures = 0
        """Failed reloads since the holder was created."""
        log.info("policy %s version %s in force", self.directory, self._bundle.short_version)

    @property
    def current(self) -> PolicyBundle:
        """The bundle in force: the last one that loaded completely."""
        return self._bundle

    def request_reload(self) -> None:
        """Ask for a reload at the next :meth:`poll`; safe to call from a signal handler."""
        self._requested.set()

    def reload(self) -> bool:
        """Load the bundle again and put it in force. True if it loaded.

        On failure the previous bundle stays in force, the error is kept in
        :attr:`last_error` and logged, and False is returned. Never raises for a bad bundle.
        """
        bundle = self.load()
        if bundle is None:
            return False
        self.adopt(bundle)
        return True

    def load(self, loader: Callable[[Path], PolicyBundle] | None = None) -> PolicyBundle | None:
        """Load the bundle again without putting it in force (:meth:`adopt` does), with
        ``loader`` or the holder's own: the bundle, or ``None`` if it does not load (the
        error is kept and logged). Safe on a background thread while another thread reads
        :attr:`current`."""
        with self._lock:
            self._requested.clear()
            fingerprint = bundle_fingerprint(self.directory)
            try:
                bundle = (loader or self._loader)(self.directory)
            except PolicyError as exc:
                error = exc
            except Exception as exc:  # a bug must not take the policy in force with it
                log.exception("policy %s: unexpected error while loading", self.directory)
                error = PolicyError(Problem(str(self.directory), None, "", f"{exc!r}"))
            else:
                self._fingerprint = fingerprint
                self._loaded = bundle.version
                self.last_error = None
                return bundle
            self._fingerprint = fingerprint
            self.last_error = error
            self.failures += 1
            log.error(
                "policy %s does not load; version %s stays in force:\n%s",
                self.directory,
                self._bundle.short_version,
                error,
            )
            return None

    def adopt(self, bundle: PolicyBundle) -> bool:
        """Put ``bundle`` (from :meth:`load` or :meth:`check`) in force; True if its
        version differs from the one in force (an equal version keeps the bundle in force,
        whose zone indexes are built)."""
        previous = self._bundle
        if bundle.version == previous.version:
            return False
        self._bundle = bundle
        log.info(
            "policy %s: version %s replaces %s",
            self.directory,
            bundle.short_version,
            previous.short_version,
        )
        return True

    def check(self, loader: Callable[[Path], PolicyBundle] | None = None) -> PolicyBundle | None:
        """Load the bundle if a reload was requested or its files changed since the last
        attempt; the bundle, not yet in force, if its version differs from the last one
        that loaded (an edit that was reverted before the first was adopted gives the
        bundle in force back). An unchanged bundle that failed to load is not retried until
        its files change again (or a reload is requested), so a broken edit is reported
        once.
        """
        if not self._requested.is_set():
            stat = bundle_stat(self.directory)
            if stat == self._stat and self._unhashed_polls < HASH_EVERY:
                self._unhashed_polls += 1
                return None
            self._stat, self._unhashed_polls = stat, 0
            if bundle_fingerprint(self.directory) == self._fingerprint:
                return None
        before = self._loaded
        bundle = self.load(loader)
        if bundle is None or bundle.version == before:
            return None
        return bundle

    def poll(self) -> bool:
        """:meth:`check` and :meth:`adopt` in one: True if a bundle with a different
        version came into force."""
        bundle = self.check()
        return bundle is not None and self.adopt(bundle)
