"""The RFC 6962 / RFC 9162 Merkle tree: hashes, compact range, proofs and their checks.

* leaf hash ``SHA-256(0x00 || entry)``, interior ``SHA-256(0x01 || left || right)``, the
  empty tree's root ``SHA-256("")``;
* :class:`CompactRange` — the right edge of the tree (one hash per set bit of the size), so
  an append costs O(1) amortised hashes and the root O(log n), never a re-hash of the log;
* proofs are built from a *perfect subtree* source ``(level, index) -> hash`` (the store
  answers from its stored tiles), and checked with the RFC 9162 §2.1.3.2 / §2.1.4.2
  algorithms, which need nothing but the proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from gateway.errors import VerificationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
TILE_HEIGHT = 8
"""Interior nodes at levels that are multiples of this are kept by the store (tiles)."""

PerfectSource = Callable[[int, int], bytes]
"""``(level, index) -> hash`` of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The right edge of a tree of ``size`` leaves: one perfect-subtree hash per set bit.

    ``append`` returns the interior nodes completed at levels that are multiples of
    :data:`TILE_HEIGHT` as ``(level, index, hash)``, for the store to keep.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise VerificationError(
                f"compact range for size {size} needs {size.bit_count()} hashes, got {len(hashes)}"
            )
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes, tiles: list[tuple[int, int, bytes]] | None = None) -> None:
        """Add one leaf hash; completed tile nodes are appended to ``tiles`` if given."""
        index = self.size
        h = leaf
        level = 0
        stack = self.hashes
        while index & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            index >>= 1
            level += 1
            if tiles is not None and level % TILE_HEIGHT == 0:
                tiles.append((level, index, h))
        stack.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 6962 root hash of the first ``size`` leaves."""
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = _sha256(b"\x01" + h + r).digest()
        return r

    def to_bytes(self) -> bytes:
        """The hashes concatenated (the size is stored beside them)."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """Inverse of :meth:`to_bytes`."""
        if len(data) % HASH_SIZE:
            raise VerificationError("compact range bytes are not a whole number of hashes")
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_root(begin: int, end: int, perfect: PerfectSource) -> bytes:
    """MTH of leaves ``[begin, end)`` where ``begin`` is a multiple of the largest power of
    two not above ``end - begin`` (always so for the subtrees RFC 6962 proofs name)."""
    if end <= begin:
        raise VerificationError(f"empty range [{begin}, {end})")
    hashes = []
    pos, size = begin, end - begin
    while size:
        level = size.bit_length() - 1
        if pos & ((1 << level) - 1):
            raise VerificationError(f"range [{begin}, {end}) is not aligned")
        hashes.append(perfect(level, pos >> level))
        pos += 1 << level
        size -= 1 << level
    r = hashes[-1]
    for h in reversed(hashes[:-1]):
        r = node_hash(h, r)
    return r


def inclusion_proof(index: int, size: int, perfect: PerfectSource) -> list[bytes]:
    """The RFC 6962 §2.1.1 audit path PATH(index, D[0:size])."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            path.append(range_root(lo + k, hi, perfect))
            hi = lo + k
        else:
            path.append(range_root(lo, lo + k, perfect))
            lo = lo + k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, perfect: PerfectSource) -> list[bytes]:
    """The RFC 6962 §2.1.2 consistency proof PROOF(old_size, D[0:new_size])."""
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, complete = 0, new_size, True
    while True:
        if old_size == hi:
            if not complete:
                proof.append(range_root(lo, hi, perfect))
            break
        k = _largest_power_of_two_below(hi - lo)
        if old_size <= lo + k:
            proof.append(range_root(lo + k, hi, perfect))
            hi = lo + k
        else:
            proof.append(range_root(lo, lo + k, perfect))
            lo, complete = lo + k, False
    proof.reverse()
    return proof


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); raises if malformed."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not below tree size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        _check_hash("proof hash", p)
        if sn == 0:
            raise VerificationError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root``; raises
    :class:`VerificationError` otherwise."""
    _check_hash("root", root)
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise VerificationError(f"inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (size2, root2) extends (size1, root1) (RFC 9162 §2.1.4.2);
    raises :class:`VerificationError` otherwise."""
    if size2 < size1 or size1 < 0:
        raise VerificationError(f"size {size2} cannot extend size {size1}")
    if size1 == size2:
        if proof:
            raise VerificationError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise VerificationError(f"two different roots for size {size1}")
        return
    if size1 == 0:
        if proof:
            raise VerificationError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise VerificationError("consistency proof is empty")
    _check_hash("root", root1)
    _check_hash("root", root2)
    for p in proof:
        _check_hash("proof hash", p)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is too short")
    if fr != root1:
        raise VerificationError(f"consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise VerificationError(f"consistency proof does not lead to the root of size {size2}")


def perfect_from_leaves(leaves: Sequence[bytes]) -> PerfectSource:
    """A perfect-subtree source over an in-memory list of leaf hashes (exports, tests)."""
    cache: dict[tuple[int, int], bytes] = {}

    def perfect(level: int, index: int) -> bytes:
        if level == 0:
            return leaves[index]
        key = (level, index)
        if key not in cache:
            cache[key] = node_hash(perfect(level - 1, 2 * index), perfect(level - 1, 2 * index + 1))
        return cache[key]

    return perfect
