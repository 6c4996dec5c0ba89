"""Tamper-evident audit log: signed entries as leaves of an RFC 9162 Merkle tree.

Writers use :class:`AuditLog`; auditors and agents use :func:`verify_log`,
:func:`verify_inclusion` and :func:`verify_consistency` with a public key they got out of
band. Storage format and crash policy: :mod:`audit.storage`; what may be logged:
:mod:`audit.records`; errors: :mod:`audit.errors`.
"""

from audit.errors import (
    AuditConfigError,
    AuditError,
    AuditStorageError,
    EntryRejectedError,
    InvalidProofError,
    LogClosedError,
    LogCorruptError,
    LogLockedError,
    ProofError,
)
from audit.log import AuditLog, ConsistencyProof, InclusionProof
from audit.merkle import EMPTY_ROOT, leaf_hash, node_hash, verify_consistency, verify_inclusion
from audit.records import MAX_FLOATS_PER_LIST, Checkpoint, EntryReceipt
from audit.verify import Problem, VerificationReport, verify_log

__all__ = [
    "EMPTY_ROOT",
    "MAX_FLOATS_PER_LIST",
    "AuditConfigError",
    "AuditError",
    "AuditLog",
    "AuditStorageError",
    "Checkpoint",
    "ConsistencyProof",
    "EntryReceipt",
    "EntryRejectedError",
    "InclusionProof",
    "InvalidProofError",
    "LogClosedError",
    "LogCorruptError",
    "LogLockedError",
    "Problem",
    "ProofError",
    "VerificationReport",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
]
