"""Audit proofs in the shape they travel in over HTTP (``wire.messages.SignedCheckpoint`` and
``wire.messages.SignedInclusionProof``).

Why here and not in the server or the agent: both ends must agree byte for byte on what a wire
checkpoint means — the hex signature travels as base64 and ``root`` as ``root_sha256`` — and the
bytes a signature covers are this package's own (:meth:`audit.Checkpoint.signed_bytes`). One
converter each way keeps the writer (server) and every verifier (agents, auditors) from drifting.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from audit.log import InclusionProof
from audit.records import Checkpoint
from crypto.errors import IntegrityError
from crypto.signing import VerifyKey


def checkpoint_to_wire(checkpoint: Checkpoint) -> dict[str, Any]:
    """An audit checkpoint as ``wire.messages.SignedCheckpoint`` fields."""
    signature = base64.b64encode(bytes.fromhex(checkpoint.signature)).decode("ascii")
    return {"origin": checkpoint.origin, "size": checkpoint.size, "root_sha256": checkpoint.root,
            "timestamp": checkpoint.time, "signature_b64": signature}


def inclusion_to_wire(proof: InclusionProof, head: Checkpoint) -> dict[str, Any]:
    """An inclusion proof with the signed head it is for, as ``wire.messages.SignedInclusionProof`` fields."""
    return {"index": proof.index, "tree_size": proof.tree_size, "leaf_sha256": proof.leaf_hash,
            "path_sha256": list(proof.path), "checkpoint": checkpoint_to_wire(head)}


def checkpoint_from_wire(wire: Mapping[str, Any], verify_key: VerifyKey) -> Checkpoint:
    """Rebuild a wire checkpoint and verify it against the log writer's key.

    Raises :class:`crypto.errors.IntegrityError` for a malformed or wrongly signed checkpoint:
    to a verifier both mean "the writer did not sign this".
    """
    try:
        signature = base64.b64decode(str(wire["signature_b64"]), validate=True).hex()
        checkpoint = Checkpoint(str(wire["origin"]), int(wire["size"]), str(wire["root_sha256"]),
                                wire["timestamp"], verify_key.fingerprint(), signature)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise IntegrityError("malformed signed checkpoint") from None
    verify_key.verify(bytes.fromhex(signature), checkpoint.signed_bytes())
    return checkpoint
