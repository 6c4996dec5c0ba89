"""``POST /v1/submissions`` and ``/v1/submissions/binary``: a sealed, signed envelope in; a signed receipt out.

Two forms of the same envelope (:class:`crypto.envelope.Envelope`): JSON with base64
ciphertexts, or the binary form (``application/octet-stream``: a line of canonical JSON, then
the raw ciphertexts), which the agents send. Both yield the same envelope, digest and receipt.

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

Accepted: the envelope joins a group commit (:mod:`server.ingest`) that writes its audit entry
``submission.accepted`` (envelope digest, not content; one fsync for the group), signs its
receipt with the server key and stores both with its nonce (one transaction for the group);
the reply leaves only after that commit. The verified envelope is handed to the round's
coordinator in memory (:mod:`server.round_events`), so its signature is checked once.
"""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from audit import AuditError
from crypto.envelope import BINARY_MEDIA_TYPE, Envelope, OpenedEnvelope, open_envelope
from crypto.errors import IntegrityError
from crypto.signing import VerifyKey
from server.admission import Caller
from server.errors import EnvelopeModeError
from server.ingest import DeferredNonce
from server.ingest import Submission as IngestItem
from server.rejections import Rejection
from server.routes.common import enrolled_agent, services_of
from server.services import Services
from server.state import TaskRow
from wire.messages import Receipt, Submission

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["submissions"])
INTEGRITY = Rejection(400, "integrity_error", "envelope failed verification")
BINARY_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}


def _live_task(services: Services, caller: Caller, task_id: str) -> TaskRow:
    task = services.state.task(task_id)
    if task is None:
        raise Rejection(404, "unknown_task", f"task {task_id!r} does not exist")
    if task.agent != caller.identity:
        raise Rejection(403, "task_not_yours", f"task {task_id!r} was issued to another agent")
    return task


def _check_open(services: Services, task: TaskRow, env: Envelope, verify_key: VerifyKey, caller: Caller
                ) -> tuple[OpenedEnvelope, tuple[str, str, float]]:
    """The verified envelope and its nonce (recorded by the group commit that stores it: :mod:`server.ingest`)."""
    privacy = services.privacy
    try:
        privacy.check_envelope(env)
    except EnvelopeModeError as exc:
        raise Rejection(400, exc.code, str(exc)) from None
    nonce = DeferredNonce(services.state)
    try:
        opened = open_envelope(env, verify_key=verify_key, nonces=nonce, expected_sender=caller.identity,
                               expected_round=task.round_id, expected_task=task.task_id,
                               expected_kind=privacy.payload_kind,
                               max_age_s=services.policy.envelope_max_age_s, now=services.clock())
    except IntegrityError:
        raise INTEGRITY from None
    assert nonce.seen is not None  # open_envelope records the nonce of every envelope it accepts
    return opened, nonce.seen


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
    """The JSON form (ciphertexts in base64): kept for members that do not send the binary one yet."""
    try:
        env = Envelope.from_dict(body.envelope)
    except IntegrityError:
        raise INTEGRITY from None
    return _accept(services_of(request), *agent, body.task_id, env)


@router.post("/submissions/binary", response_model=Receipt, openapi_extra=BINARY_BODY,
             summary="Submit a sealed score envelope in its binary form; get a signed receipt")
async def submit_binary(request: Request) -> Receipt:
    """The same envelope as :func:`submit`, ``crypto.envelope.Envelope.to_binary`` as the whole body.

    Why: the ciphertexts travel raw (a third fewer bytes through TLS and HTTP than base64) and
    are sliced out of the body, not JSON-parsed and base64-decoded (issue 14 §6). The task is the
    one the envelope names (its signature covers that binding); everything after parsing is the
    JSON route's. The enrolment check (``enrolled_agent``, 403), the media type (415), the parse
    (400) and the checks of :func:`_accept` run in one worker thread, in that order: as a FastAPI
    dependency the enrolment check took a thread hand-off of its own on every envelope.
    """
    data = await request.body()
    return await run_in_threadpool(_accept_binary, request, data)


def _accept_binary(request: Request, data: bytes) -> Receipt:
    caller, agent_row = enrolled_agent(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != BINARY_MEDIA_TYPE:
        raise Rejection(415, "unsupported_media_type", f"POST /v1/submissions/binary takes {BINARY_MEDIA_TYPE}, "
                        f"not {media or 'no content type'!r}")
    try:
        env = Envelope.from_binary(data)
    except IntegrityError:
        raise INTEGRITY from None
    return _accept(services_of(request), caller, agent_row, env.task_id, env)


def _accept(services: Services, caller: Caller, agent_row: dict[str, Any], task_id: str, env: Envelope) -> Receipt:
    """Checks 1-6 of the module docstring, then the group commit; the receipt once the commit is durable."""
    task = _live_task(services, caller, task_id)
    previous = services.state.submission(task.task_id)
    if previous is not None:
        if previous["envelope_sha256"] == env.sha256():
            return Receipt.model_validate(previous["receipt"])
        raise Rejection(409, "duplicate_submission", f"task {task.task_id!r} already has an accepted submission")
    if task.status == "expired" or task.deadline <= services.clock():
        raise Rejection(410, "task_expired", f"task {task.task_id!r} expired (deadline passed or round closed)")
    verify_key = VerifyKey.from_bytes(base64.b64decode(agent_row["signing_key_b64"]))
    opened, nonce = _check_open(services, task, env, verify_key, caller)
    try:
        try:
            services.privacy.check_payload(opened)
        except EnvelopeModeError as exc:
            raise Rejection(422, exc.code, str(exc)) from None
        clipped = _check_scores(services, task, opened)
    except Rejection:
        services.ingest.burn(nonce)  # verified, then refused: its nonce is spent all the same
        raise
    try:
        item = services.ingest.commit(IngestItem(agent=caller.identity, task=task, envelope=env, opened=opened,
                                                 nonce=nonce, clipped=clipped, now=services.clock()))
    except (SQLAlchemyError, AuditError) as exc:
        log.error("submission for task %s not stored: %s", task.task_id, exc)
        raise Rejection(503, "storage_unavailable", "the submission could not be stored; retry later") from None
    if item.outcome != "accepted":  # a concurrent twin won the race: serve its receipt, else refuse
        winner = services.state.submission(task.task_id)
        if winner is not None and winner["envelope_sha256"] == opened.envelope_sha256:
            return Receipt.model_validate(winner["receipt"])
        if item.outcome == "replay":
            raise INTEGRITY
        if item.outcome == "expired":
            raise Rejection(410, "task_expired", f"task {task.task_id!r} expired (its round closed before this "
                            "submission was stored)")
        raise Rejection(409, "duplicate_submission", f"task {task.task_id!r} already has an accepted submission")
    assert item.receipt is not None  # accepted: signed inside the commit that stored it
    return item.receipt
