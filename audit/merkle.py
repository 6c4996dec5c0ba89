"""RFC 9162 (Certificate Transparency v2) Merkle tree: hashes, proofs, and their verification.

Why this exact construction: auditors and agents already have verifiers for it, and its
domain-separated hashes (``0x00`` before a leaf, ``0x01`` before a node) make a leaf
impossible to pass off as an interior node (the second-preimage attack on naive trees).
``MTH`` splits ``n`` leaves at ``k``, the largest power of two *smaller* than ``n``.

:class:`MerkleTree` keeps every complete, aligned subtree hash, so appending is amortised
O(1) and a root or proof for any size up to the current one costs O(log² n) hashes — the
log never rehashes its history. The ``verify_*`` functions are pure (§2.1.3.2, §2.1.4.2):
an agent holding only a receipt, a proof and a signed checkpoint can run them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from audit.errors import InvalidProofError, ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

HashLike = bytes | str


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one log entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only tree of leaf hashes (not thread-safe: :class:`~audit.log.AuditLog` locks)."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash, carrying completed pairs up the levels."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        self._levels[0].append(leaf)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            pair = self._levels[level][-2:]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``; every range the RFC recursion visits is aligned."""
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all); SHA-256("") when empty."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is outside 0..{self.size}")
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_path(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``, leaf-side first."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ProofError(f"no leaf {index} in a tree of size {size} (log size {self.size})")
        path: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start, m = start + k, m - k
        path.reverse()
        return path

    def consistency_path(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])``; empty when old is 0 or equal."""
        new_size = self.size if new_size is None else new_size
        if not 0 <= old_size <= new_size <= self.size:
            raise ProofError(f"no consistency proof from size {old_size} to {new_size} (log size {self.size})")
        if old_size in (0, new_size):
            return []
        path: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            path.append(self._hash(start, end))
        path.reverse()
        return path


def as_hash(value: HashLike, what: str) -> bytes:
    """Accept a 32-byte hash as bytes or hex (receipts travel as JSON)."""
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise InvalidProofError(f"{what}: not hex") from None
    if len(value) != HASH_SIZE:
        raise InvalidProofError(f"{what}: {len(value)} bytes, expected {HASH_SIZE}")
    return value


def _hashes(proof: Sequence[HashLike]) -> list[bytes]:
    return [as_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


def verify_inclusion(leaf: HashLike, index: int, size: int, proof: Sequence[HashLike], root: HashLike) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root`` (RFC 9162 §2.1.3.2).

    Raises :class:`InvalidProofError`; returns nothing on success (a bool is too easy to ignore).
    """
    leaf_b, root_b, path = as_hash(leaf, "leaf hash"), as_hash(root, "root"), _hashes(proof)
    if not 0 <= index < size:
        raise InvalidProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf_b
    for p in path:
        if sn == 0:
            raise InvalidProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProofError("inclusion proof is shorter than the tree is deep")
    if r != root_b:
        raise InvalidProofError("inclusion proof does not lead to the given root")


def verify_consistency(
    old_size: int, new_size: int, old_root: HashLike, new_root: HashLike, proof: Sequence[HashLike]
) -> None:
    """Check that the tree of ``old_size`` is a prefix of the one of ``new_size`` (RFC 9162 §2.1.4.2).

    An empty tree is a prefix of every tree (empty proof). Raises :class:`InvalidProofError`.
    """
    old_b, new_b, path = as_hash(old_root, "old root"), as_hash(new_root, "new root"), _hashes(proof)
    if not 0 <= old_size <= new_size:
        raise InvalidProofError(f"sizes go backwards: {old_size} -> {new_size}")
    if old_size == 0 or old_size == new_size:
        if path:
            raise InvalidProofError("consistency proof must be empty for these sizes")
        if old_size == new_size and old_b != new_b:
            raise InvalidProofError("equal sizes but different roots: the log forked")
        return
    if not path:
        raise InvalidProofError("empty consistency proof for a growing tree")
    if old_size & (old_size - 1) == 0:
        path = [old_b, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProofError("consistency proof is shorter than the tree is deep")
    if fr != old_b:
        raise InvalidProofError("consistency proof does not lead to the old root")
    if sr != new_b:
        raise InvalidProofError("consistency proof does not lead to the new root")
