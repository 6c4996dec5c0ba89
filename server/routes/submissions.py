"""``POST /v1/submissions``: a sealed, signed score envelope in; a signed receipt out.

Order of checks (each refusal precise, audited, never a 500):

1. the task exists (404), is the caller's (403);
2. the task already has a submission: the *same* envelope gets the stored receipt again (200,
   idempotent — a retry after a lost reply is safe), a different one is 409;
3. the task is still live (410 once expired or its round closed);
4. framing, payload kind and CKKS context for the privacy mode (400; the mode object decides);
5. ``crypto.envelope.open_envelope``: signature with the key registered at enrolment, sender /
   round / task binding, freshness, and the nonce recorded in the durable store — all before
   any ciphertext is deserialised; any failure is one opaque 400 ``integrity_error``;
6. the payload itself (422 ``malformed_ciphertext``: not a fresh CKKS encryption under the
   context — size, parameters, level, scale), vector length and (tls-only) score range (422;
   clipped instead when the policy says so).

Accepted: an audit entry ``submission.accepted`` (envelope digest, not content), then the
receipt signed by the server key is stored together with the envelope in one transaction
before the reply leaves.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from crypto.envelope import Envelope, OpenedEnvelope, open_envelope
from crypto.errors import IntegrityError
from crypto.signing import VerifyKey
from server.admission import Caller
from server.errors import EnvelopeModeError
from server.rejections import Rejection
from server.routes.common import enrolled_agent, services_of
from server.services import Services
from server.state import TaskRow
from wire.messages import Receipt, Submission

router = APIRouter(prefix="/v1", tags=["submissions"])
INTEGRITY = Rejection(400, "integrity_error", "envelope failed verification")


def _live_task(services: Services, caller: Caller, task_id: str) -> TaskRow:
    task = services.state.task(task_id)
    if task is None:
        raise Rejection(404, "unknown_task", f"task {task_id!r} does not exist")
    if task.agent != caller.identity:
        raise Rejection(403, "task_not_yours", f"task {task_id!r} was issued to another agent")
    return task


def _check_open(services: Services, task: TaskRow, env: Envelope, verify_key: VerifyKey, caller: Caller
                ) -> OpenedEnvelope:
    privacy = services.privacy
    try:
        privacy.check_envelope(env)
    except EnvelopeModeError as exc:
        raise Rejection(400, exc.code, str(exc)) from None
    try:
        return open_envelope(env, verify_key=verify_key, nonces=services.state, expected_sender=caller.identity,
                             expected_round=task.round_id, expected_task=task.task_id,
                             expected_kind=privacy.payload_kind,
                             max_age_s=services.policy.envelope_max_age_s, now=services.clock())
    except IntegrityError:
        raise INTEGRITY from None


def _check_scores(services: Services, task: TaskRow, opened: OpenedEnvelope) -> int:
    """Length and range checks; returns how many scores the policy will clip (0 if none)."""
    policy = services.policy
    n_items = len(task.payload.get("items", []))
    if opened.length != n_items:
        raise Rejection(422, "wrong_length", f"envelope holds {opened.length} scores; task has {n_items} items")
    if opened.length > policy.max_items:
        raise Rejection(422, "too_many_scores", f"{opened.length} scores exceed the policy maximum {policy.max_items}")
    if opened.scores is None:
        return 0
    outside = [i for i, s in enumerate(opened.scores) if not policy.score_min <= s <= policy.score_max]
    if outside and policy.out_of_range == "refuse":
        first = outside[0]
        raise Rejection(422, "score_out_of_range",
                        f"scores[{first}]={opened.scores[first]} outside [{policy.score_min}, {policy.score_max}] "
                        f"({len(outside)} out of range)")
    return len(outside)


@router.post("/submissions", response_model=Receipt, summary="Submit a sealed score envelope; get a signed receipt")
def submit(body: Submission, request: Request,
           agent: Annotated[tuple[Caller, dict[str, Any]], Depends(enrolled_agent)]) -> Receipt:
    services = services_of(request)
    caller, agent_row = agent
    task = _live_task(services, caller, body.task_id)
    try:
        env = Envelope.from_dict(body.envelope)
    except IntegrityError:
        raise INTEGRITY from None
    previous = services.state.submission(task.task_id)
    if previous is not None:
        if previous["envelope_sha256"] == env.sha256():
            return Receipt.model_validate(previous["receipt"])
        raise Rejection(409, "duplicate_submission", f"task {task.task_id!r} already has an accepted submission")
    if task.status == "expired" or task.deadline <= services.clock():
        raise Rejection(410, "task_expired", f"task {task.task_id!r} expired (deadline passed or round closed)")
    verify_key = VerifyKey.from_bytes(base64.b64decode(agent_row["signing_key_b64"]))
    opened = _check_open(services, task, env, verify_key, caller)
    try:
        services.privacy.check_payload(opened)
    except EnvelopeModeError as exc:
        raise Rejection(422, exc.code, str(exc)) from None
    clipped = _check_scores(services, task, opened)

    now = services.clock()
    entry = services.audit.record(caller.identity, "submission.accepted", {
        "task_id": task.task_id, "round_id": task.round_id, "envelope_sha256": opened.envelope_sha256,
        "kind": opened.kind, "length": opened.length, "clipped": clipped,
    })
    receipt = Receipt(task_id=task.task_id, round_id=task.round_id, agent=caller.identity,
                      envelope_sha256=opened.envelope_sha256, received_at=now, audit_index=entry.index,
                      audit_leaf_sha256=entry.leaf_sha256)
    signature = base64.b64encode(services.signing_key.sign(receipt.signed_bytes())).decode("ascii")
    receipt = receipt.model_copy(update={"signature_b64": signature})
    stored = services.state.record_submission(
        task_id=task.task_id, agent=caller.identity, round_id=task.round_id, envelope_sha256=opened.envelope_sha256,
        envelope=env.to_dict(), receipt=receipt.model_dump(mode="json"), now=now,
    )
    if not stored:  # a concurrent twin won the race: serve its receipt or refuse as a duplicate
        winner = services.state.submission(task.task_id)
        if winner is not None and winner["envelope_sha256"] == opened.envelope_sha256:
            return Receipt.model_validate(winner["receipt"])
        raise Rejection(409, "duplicate_submission", f"task {task.task_id!r} already has an accepted submission")
    return receipt
