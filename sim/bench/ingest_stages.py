"""Where the server's CPU per envelope goes: each ingest stage timed alone, on one thread, for section 4.

Section 4 measures the whole path (TLS, HTTP, routing, threads, everything below); this takes
the stages the route runs on an envelope one by one — the same functions, on real sealed
envelopes, a real SQLite store and audit log — and charges each its CPU time (``thread_time``,
so waiting for a disk flush costs nothing). What the whole path costs beyond their sum is
TLS, HTTP framing, routing, the reads of member and task, and thread hand-offs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.canonical import canonical_json
from crypto.ckks import CKKSKeyOwner
from crypto.envelope import Envelope, open_envelope, seal_scores
from crypto.signing import SigningKey
from server.audit_trail import AuditLogTrail
from server.ingest import DeferredNonce
from server.state import StateStore
from wire.messages import Receipt, Submission

SAMPLES = 40


def _cpu_ms(fn: Callable[[int], Any], n: int) -> tuple[float, list[Any]]:
    """Mean CPU milliseconds of ``fn(i)`` over ``i < n``, and its results."""
    out = []
    start = time.thread_time()
    for i in range(n):
        out.append(fn(i))
    return (time.thread_time() - start) / n * 1000.0, out


def stage_costs(scores: int, samples: int = SAMPLES) -> dict[str, float]:
    """Stage name -> CPU milliseconds per envelope of ``scores`` scores (ckks, N=8192 defaults)."""
    owner, key = CKKSKeyOwner.generate(), SigningKey.generate()
    context, verify = owner.public_context, key.verify_key()
    sealed = [seal_scores([0.25] * scores, context, signing_key=key, sender="member", round_id="r",
                          task_id=f"t{i}") for i in range(samples)]
    json_bodies = [json.dumps({"task_id": e.task_id, "envelope": e.to_dict()}).encode() for e in sealed]
    binary_bodies = [e.to_binary() for e in sealed]
    costs: dict[str, float] = {}
    costs["json: parse body"], parsed = _cpu_ms(lambda i: json.loads(json_bodies[i]), samples)
    costs["json: validate Submission"], subs = _cpu_ms(lambda i: Submission.model_validate(parsed[i]), samples)
    costs["json: envelope from dict (base64 decode)"], _ = _cpu_ms(lambda i: Envelope.from_dict(subs[i].envelope),
                                                                   samples)
    costs["binary: envelope from body"], envs = _cpu_ms(lambda i: Envelope.from_binary(binary_bodies[i]), samples)
    costs["digest: canonical JSON wire form + SHA-256"], _ = _cpu_ms(lambda i: envs[i].sha256(), samples)
    # the same bytes as before issue 14 §6 made them: the whole dict, 440 KB of base64 included, through json.dumps
    costs["digest, before: json.dumps of the whole dict + SHA-256"], _ = _cpu_ms(
        lambda i: hashlib.sha256(canonical_json(envs[i].to_dict())).hexdigest(), samples)
    with tempfile.TemporaryDirectory(prefix="mor-bench-stages-") as tmp_name:
        tmp = Path(tmp_name)
        state = StateStore(f"sqlite:///{tmp / 'state.db'}")
        audit = AuditLogTrail.open(tmp / "audit", SigningKey.generate(), origin="mor://bench/server")
        try:
            costs["signature + binding + nonce read"], opened = _cpu_ms(lambda i: open_envelope(
                envs[i], verify_key=verify, nonces=DeferredNonce(state), expected_sender="member"), samples)
            costs["CKKS structural check (check_fresh)"], _ = _cpu_ms(
                lambda i: context.check_fresh(opened[i].sealed), samples)
            costs["audit entry (one per group: fsync not CPU)"], records = _cpu_ms(lambda i: audit.record(
                "member", "submission.accepted", {"task_id": envs[i].task_id, "envelope_sha256": envs[i].sha256()}),
                samples)
            server_key = SigningKey.generate()

            def receipt(i: int) -> Receipt:
                r = Receipt(task_id=envs[i].task_id, round_id="r", agent="member", envelope_sha256=envs[i].sha256(),
                            received_at=0.0, audit_index=records[i].index, audit_leaf_sha256=records[i].leaf_sha256)
                return r.model_copy(update={"signature_b64": base64.b64encode(server_key.sign(r.signed_bytes()))
                                            .decode("ascii")})

            costs["receipt signed"], receipts = _cpu_ms(receipt, samples)
            costs["SQLite row + nonce (own transaction)"], _ = _cpu_ms(lambda i: state.record_submissions([{
                "task_id": envs[i].task_id, "agent": "member", "round_id": "r", "envelope_sha256": envs[i].sha256(),
                "envelope": envs[i].to_bytes().decode("utf-8"), "receipt": receipts[i].model_dump(mode="json"),
                "now": 0.0, "nonce": ("member", envs[i].nonce, time.time() + 300)}]), samples)
        finally:
            audit.close()
            state.engine.dispose()
    return {name: round(ms, 3) for name, ms in costs.items()}
