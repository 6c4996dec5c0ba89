"""RFC 9162 Merkle tree: published CT vectors, an independent reference, and tamper probes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import InvalidProofError, ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.merkle import MerkleTree

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962_merkle.json").read_text())


# -- an independent, literal transcription of the RFC's recursive definitions --------------------
def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return _h(b"")
    if len(d) == 1:
        return _h(b"\x00" + d[0])
    k = _k(len(d))
    return _h(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def _tree(data: list[bytes]) -> MerkleTree:
    return MerkleTree([leaf_hash(x) for x in data])


# -- published vectors ------------------------------------------------------------------------------
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves_hex"]]
ROOTS = {int(size): root for size, root in VECTORS["roots_by_size"].items()}


def test_vector_leaf_hashes_and_roots_for_every_size() -> None:
    assert [leaf_hash(x).hex() for x in LEAVES] == VECTORS["leaf_hashes"]
    tree = _tree(LEAVES)
    for size, root in ROOTS.items():
        assert tree.root(size).hex() == root
        assert ref_mth(LEAVES[:size]).hex() == root  # the reference agrees with the published data too


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}of{c['size']}")
def test_vector_inclusion_paths_generate_and_verify(case: dict) -> None:
    tree = _tree(LEAVES)
    assert [h.hex() for h in tree.inclusion_path(case["index"], case["size"])] == case["path"]
    verify_inclusion(tree.leaf(case["index"]), case["index"], case["size"], case["path"], ROOTS[case["size"]])


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}to{c['size2']}")
def test_vector_consistency_paths_generate_and_verify(case: dict) -> None:
    tree = _tree(LEAVES)
    assert [h.hex() for h in tree.consistency_path(case["size1"], case["size2"])] == case["path"]
    verify_consistency(case["size1"], case["size2"], ROOTS[case["size1"]], ROOTS[case["size2"]], case["path"])


def _inclusion_probes(index: int, size: int, path: list[bytes], root: bytes, leaf: bytes) -> list:
    """Corruptions in the style of transparency-dev's verify_test.go; every one must be refused."""
    some = bytes.fromhex("ab" * 32)
    probes = [(index + 1, size, leaf, path, root), (index ^ 2, size, leaf, path, root),
              (index, size * 2, leaf, path, root), (index, size, some, path, root),
              (index, size, leaf, path, some), (index, size, leaf, [*path, root], root),
              (index, size, leaf, [root, *path], root)]
    if index > 0:
        probes.append((index - 1, size, leaf, path, root))
    if size > 1:
        probes.append((index, size // 2, leaf, path, root))
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, leaf, bad, root))
    if path:
        probes.append((index, size, leaf, path[:-1], root))
    return probes


@pytest.mark.parametrize("case", VECTORS["inclusion"][1:], ids=lambda c: f"{c['index']}of{c['size']}")
def test_vector_inclusion_corruptions_are_refused(case: dict) -> None:
    path = [bytes.fromhex(p) for p in case["path"]]
    leaf, root = leaf_hash(LEAVES[case["index"]]), bytes.fromhex(ROOTS[case["size"]])
    for probe in _inclusion_probes(case["index"], case["size"], path, root, leaf):
        with pytest.raises(InvalidProofError):
            verify_inclusion(probe[2], probe[0], probe[1], probe[3], probe[4])


@pytest.mark.parametrize("case", VECTORS["consistency"][1:], ids=lambda c: f"{c['size1']}to{c['size2']}")
def test_vector_consistency_corruptions_are_refused(case: dict) -> None:
    s1, s2, path = case["size1"], case["size2"], [bytes.fromhex(p) for p in case["path"]]
    r1, r2 = bytes.fromhex(ROOTS[s1]), bytes.fromhex(ROOTS[s2])
    probes = [(s1 - 1, s2, r1, r2, path), (s1 + 1, s2, r1, r2, path), (s1, s2 * 2, r1, r2, path),
              (s1, s2 // 2, r1, r2, path), (s1, s2, r2, r1, path), (s1, s2, r1, r2, []),
              (s1, s2, r1, r2, [*path, r1]), (s1, s2, r1, r2, [r2, *path]), (s1, s2, r1, r2, path[:-1])]
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((s1, s2, r1, r2, bad))
    for a, b, ra, rb, p in probes:
        with pytest.raises(InvalidProofError):
            verify_consistency(a, b, ra, rb, p)


def test_edge_cases_of_sizes_and_hash_lengths() -> None:
    empty = bytes.fromhex(ROOTS[0])
    verify_consistency(0, 5, empty, ROOTS[5], [])  # the empty tree is a prefix of everything
    with pytest.raises(InvalidProofError, match="forked"):
        verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])
    with pytest.raises(InvalidProofError, match="backwards"):
        verify_consistency(5, 3, ROOTS[5], ROOTS[3], [])
    with pytest.raises(InvalidProofError, match="outside"):
        verify_inclusion(leaf_hash(b""), 1, 1, [], ROOTS[1])
    with pytest.raises(InvalidProofError, match="bytes"):
        verify_inclusion(b"short", 0, 1, [], ROOTS[1])
    with pytest.raises(InvalidProofError, match="hex"):
        verify_inclusion("zz" * 32, 0, 1, [], ROOTS[1])
    with pytest.raises(ProofError):
        _tree(LEAVES).inclusion_path(8, 8)
    with pytest.raises(ProofError):
        _tree(LEAVES).consistency_path(3, 9)


# -- properties over random trees -------------------------------------------------------------------
@st.composite
def trees(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    n = draw(st.integers(min_value=1, max_value=130))
    data = [draw(st.binary(max_size=6)) for _ in range(n)]
    return data, draw(st.integers(0, n - 1)), draw(st.integers(1, n))


@settings(max_examples=150, deadline=None)
@given(trees())
def test_proofs_match_the_rfc_definition_and_verify(case: tuple[list[bytes], int, int]) -> None:
    data, index, old = case
    tree, n = _tree(data), len(data)
    root = ref_mth(data)
    assert tree.root() == root and tree.root(old) == ref_mth(data[:old])
    path = tree.inclusion_path(index)
    assert path == ref_path(index, data)
    verify_inclusion(leaf_hash(data[index]), index, n, path, root)
    proof = tree.consistency_path(old)
    assert proof == (ref_subproof(old, data, True) if old < n else [])
    verify_consistency(old, n, ref_mth(data[:old]), root, proof)


@settings(max_examples=100, deadline=None)
@given(trees(), st.data())
def test_any_single_bit_flip_in_a_proof_is_refused(case: tuple[list[bytes], int, int], data: st.DataObject) -> None:
    leaves, index, old = case
    tree, n = _tree(leaves), len(leaves)
    path = tree.inclusion_path(index)
    if path:
        i, bit = data.draw(st.integers(0, len(path) - 1)), data.draw(st.integers(0, 255))
        bad = list(path)
        bad[i] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[i]))
        with pytest.raises(InvalidProofError):
            verify_inclusion(tree.leaf(index), index, n, bad, tree.root())
    proof = tree.consistency_path(old)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(InvalidProofError):
            verify_consistency(old, n, tree.root(old), tree.root(), bad)
