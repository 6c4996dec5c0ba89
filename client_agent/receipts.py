"""Checking what the server signs for the agent: receipts, its audit checkpoint, inclusion proofs.

A receipt is the server's signed promise "I accepted envelope <sha256> for task <id> and logged
it as entry <index> with leaf hash <h>". The agent keeps it in its *own* audit log; with an
inclusion proof against a signed checkpoint of the server's log, anyone can later show that
the server's log holds that entry — or that the server cut or rewrote its log (see
:mod:`audit.verify`: entries after the last checkpoint can only be proven missing by receipts).

Checkpoints travel in the wire shape (``root_sha256``, base64 signature) and are rebuilt as
the audit package's own :class:`audit.Checkpoint` so the signed bytes are exactly the log's.
Every failure is one :class:`~client_agent.errors.ServerTrustError` saying what did not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from audit import Checkpoint, InvalidProofError, verify_inclusion
from audit.wire_form import checkpoint_from_wire
from client_agent.errors import ServerTrustError
from crypto.canonical import canonical_json
from crypto.errors import IntegrityError
from crypto.signing import VerifyKey
from wire.messages import Receipt, SignedCheckpoint, SignedInclusionProof


def receipt_sha256(receipt: Receipt) -> str:
    """Digest of the receipt as signed and sent (what the agent's audit entry cites)."""
    return hashlib.sha256(canonical_json(receipt.model_dump(mode="json"))).hexdigest()


def verify_receipt(receipt: Receipt, server_key: VerifyKey, *, agent: str, task_id: str, round_id: str,
                   envelope_sha256: str) -> None:
    """The receipt is signed by the server and acknowledges exactly *our* envelope for *this* task."""
    try:
        server_key.verify(base64.b64decode(receipt.signature_b64, validate=True), receipt.signed_bytes())
    except (binascii.Error, ValueError, IntegrityError):
        raise ServerTrustError(f"task {task_id}: receipt signature does not verify with the server key "
                               f"{server_key.fingerprint()[:16]}…") from None
    expected = {"agent": agent, "task_id": task_id, "round_id": round_id, "envelope_sha256": envelope_sha256}
    for name, want in expected.items():
        got = getattr(receipt, name)
        if got != want:
            raise ServerTrustError(f"task {task_id}: receipt.{name} is {got!r}, expected {want!r}")


def verify_checkpoint(checkpoint: SignedCheckpoint, server_key: VerifyKey) -> Checkpoint:
    """The server's signed tree head, verified under its key."""
    try:
        return checkpoint_from_wire(checkpoint.model_dump(), server_key)
    except IntegrityError:
        raise ServerTrustError(f"server audit checkpoint (size {checkpoint.size}) is not signed by the server key "
                               f"{server_key.fingerprint()[:16]}…") from None


def verify_receipt_inclusion(receipt: Receipt, proof: SignedInclusionProof, server_key: VerifyKey) -> Checkpoint:
    """The receipt's entry is in the server's log under a checkpoint the server signed."""
    checkpoint = verify_checkpoint(proof.checkpoint, server_key)
    if proof.index != receipt.audit_index or proof.leaf_sha256 != receipt.audit_leaf_sha256:
        raise ServerTrustError(f"task {receipt.task_id}: proof is for entry {proof.index} ({proof.leaf_sha256[:16]}…), "
                               f"the receipt cites {receipt.audit_index} ({receipt.audit_leaf_sha256[:16]}…)")
    if proof.tree_size != checkpoint.size:
        raise ServerTrustError(f"task {receipt.task_id}: proof is for a tree of {proof.tree_size} entries, the signed "
                               f"checkpoint covers {checkpoint.size}")
    try:
        verify_inclusion(receipt.audit_leaf_sha256, receipt.audit_index, checkpoint.size, proof.path_sha256,
                         checkpoint.root)
    except InvalidProofError as exc:
        raise ServerTrustError(f"task {receipt.task_id}: inclusion proof of audit entry {receipt.audit_index} "
                               f"fails: {exc}") from None
    return checkpoint
