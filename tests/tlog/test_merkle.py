"""RFC 6962 hashing and proofs against the Certificate Transparency reference vectors.

Known answers copied from transparency-dev/merkle (Apache-2.0, Google LLC):
rfc6962/rfc6962_test.go (TestRFC6962Hasher) and proof/verify_test.go (leaves, roots,
inclusionProofs, consistencyProofs). Property tests compare with the plain recursive
definitions of RFC 6962 §2.1, written out below.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import VerificationError
from gateway.tlog.merkle import (
    EMPTY_ROOT,
    TILE_HEIGHT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_from_leaves,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)


def dh(h: str) -> bytes:
    return bytes.fromhex(h)


# transparency-dev/merkle proof/verify_test.go
LEAVES = [
    dh(""),
    dh("00"),
    dh("10"),
    dh("2021"),
    dh("3031"),
    dh("40414243"),
    dh("5051525354555657"),
    dh("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [
    dh("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    dh("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    dh("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    dh("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    dh("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    dh("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    dh("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    dh("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# (1-based leaf, tree size, proof)
INCLUSION = [
    (1, 1, []),
    (
        1,
        8,
        [
            dh("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            dh("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            dh("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            dh("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            dh("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            dh("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (3, 3, [dh("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        2,
        5,
        [
            dh("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            dh("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            dh("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            dh("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            dh("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            dh("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            dh("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            dh("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            dh("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            dh("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            dh("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            dh("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            dh("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            dh("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]


# --- RFC 6962 §2.1 written out literally: the reference the fast code is checked against ---


def ref_mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [ref_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, data[:k], b), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


def ref_proof(m: int, data: list[bytes]) -> list[bytes]:
    return ref_subproof(m, data, True) if 0 < m < len(data) else []


# ------------------------------------------------------------------------------------------


def test_hasher_known_answers() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (
        leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert (
        leaf_hash(b"L123456").hex()
        == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert (
        node_hash(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_roots_of_reference_trees() -> None:
    cr = CompactRange()
    for size, data in enumerate(LEAVES, start=1):
        cr.append(leaf_hash(data))
        assert cr.root() == ROOTS[size - 1], size
    assert CompactRange().root() == EMPTY_ROOT


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_reference_vectors(leaf: int, size: int, proof: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in LEAVES[:size]]
    assert inclusion_proof(leaf - 1, size, perfect_from_leaves(leaves)) == proof
    verify_inclusion(leaf - 1, size, leaves[leaf - 1], proof, ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_reference_vectors(
    size1: int, size2: int, proof: list[bytes]
) -> None:
    leaves = [leaf_hash(d) for d in LEAVES[:size2]]
    assert consistency_proof(size1, size2, perfect_from_leaves(leaves)) == proof
    verify_consistency(size1, size2, ROOTS[size1 - 1], ROOTS[size2 - 1], proof)


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 8]) + h[1:]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_fail(leaf: int, size: int, proof: list[bytes]) -> None:
    """The corruptions of verify_test.go's corruptInclusionProof."""
    lh = leaf_hash(LEAVES[leaf - 1])
    root = ROOTS[size - 1]
    some = dh("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (leaf - 2, size, lh, proof, root),
        (leaf, size, lh, proof, root),
        ((leaf - 1) ^ 2, size, lh, proof, root),
        (leaf - 1, size * 2, lh, proof, root),
        (leaf - 1, size // 2, lh, proof, root),
        (leaf - 1, size, leaf_hash(b"WrongLeaf"), proof, root),
        (leaf - 1, size, lh, proof, EMPTY_ROOT),
        (leaf - 1, size, lh, proof, some),
        (leaf - 1, size, lh, [*proof, root], root),
        (leaf - 1, size, lh, [root, *proof], root),
        (leaf - 1, size, lh, proof[:-1], root),
        (leaf - 1, size, lh, [proof[0], some, *proof[1:]], root),
    ]
    probes += [
        (leaf - 1, size, lh, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]], root)
        for i in range(len(proof))
    ]
    for index, sz, lf, pr, rt in probes:
        if index < 0:
            continue
        with pytest.raises(VerificationError):
            verify_inclusion(index, sz, lf, pr, rt)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proofs_fail(size1: int, size2: int, proof: list[bytes]) -> None:
    """The corruptions of verify_test.go's corruptConsistencyProof."""
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    wrong = leaf_hash(b"WrongRoot")
    probes = [
        (size1 - 1, size2, r1, r2, proof),
        (size1 + 1, size2, r1, r2, proof),
        (size1 ^ 2, size2, r1, r2, proof),
        (size1, size2 * 2, r1, r2, proof),
        (size1, size2 // 2, r1, r2, proof),
        (size1, size2, wrong, r2, proof),
        (size1, size2, r1, wrong, proof),
        (size1, size2, r2, r1, proof),
        (size1, size2, r1, r2, []),
        (size1, size2, r1, r2, [*proof, r1]),
        (size1, size2, r1, r2, [*proof, r2]),
        (size1, size2, r1, r2, [r1, *proof]),
        (size1, size2, r1, r2, [r2, *proof]),
        (size1, size2, r1, r2, [proof[0], *proof]),
        (size1, size2, r1, r2, proof[:-1]),
    ]
    probes += [
        (size1, size2, r1, r2, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]])
        for i in range(len(proof))
    ]
    for s1, s2, a, b, pr in probes:
        if s1 == size1 and s2 == size2 and a == r1 and b == r2 and pr == proof:
            continue
        if s1 == 0 and not pr:
            continue  # the empty tree is consistent with everything
        with pytest.raises(VerificationError):
            verify_consistency(s1, s2, a, b, pr)


def test_edge_cases_of_verification() -> None:
    r = leaf_hash(b"data")
    verify_inclusion(0, 1, r, [], r)
    with pytest.raises(VerificationError):
        verify_inclusion(0, 1, r, [], b"")
    with pytest.raises(VerificationError):
        verify_inclusion(1, 1, r, [], r)
    with pytest.raises(VerificationError):
        verify_inclusion(0, 0, r, [], r)
    verify_consistency(0, 0, b"x", b"x", [])
    verify_consistency(0, 5, b"x", b"y", [])
    with pytest.raises(VerificationError):
        verify_consistency(1, 1, EMPTY_ROOT, r, [])
    with pytest.raises(VerificationError):
        verify_consistency(2, 1, r, r, [])
    with pytest.raises(VerificationError):
        verify_consistency(1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])


data_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=60)
@given(data=data_lists, pick=st.data())
def test_compact_range_and_proofs_equal_the_rfc_definitions(
    data: list[bytes], pick: st.DataObject
) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(data)
    cr = CompactRange()
    tiles: list[tuple[int, int, bytes]] = []
    for i, leaf in enumerate(leaves):
        cr.append(leaf, tiles)
        assert cr.size == i + 1
    assert cr.root() == ref_mth(data)
    restored = CompactRange.from_bytes(cr.size, cr.to_bytes())
    assert restored.root() == cr.root()
    perfect = perfect_from_leaves(leaves)
    for level, index, h in tiles:
        assert level % TILE_HEIGHT == 0
        assert h == ref_mth(data[index << level : (index + 1) << level])

    size = pick.draw(st.integers(1, n), label="size")
    m = pick.draw(st.integers(0, size - 1), label="leaf")
    root = ref_mth(data[:size])
    proof = inclusion_proof(m, size, perfect)
    assert proof == ref_path(m, data[:size])
    assert root_from_inclusion_proof(m, size, leaves[m], proof) == root
    old = pick.draw(st.integers(0, size), label="old")
    cproof = consistency_proof(old, size, perfect)
    assert cproof == ref_proof(old, data[:size])
    verify_consistency(old, size, ref_mth(data[:old]), root, cproof)
    if 0 < old < size and ref_mth(data[:old]) != root:
        with pytest.raises(VerificationError):
            verify_consistency(old, size, root, root, cproof)


def test_tiles_are_recorded_at_level_eight() -> None:
    cr = CompactRange()
    tiles: list[tuple[int, int, bytes]] = []
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(600)]
    for leaf in leaves:
        cr.append(leaf, tiles)
    assert [(lv, ix) for lv, ix, _ in tiles] == [(8, 0), (8, 1)]
    assert tiles[1][2] == perfect_from_leaves(leaves)(8, 1)
