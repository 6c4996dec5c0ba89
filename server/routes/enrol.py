"""``POST /v1/enrol``: an agent registers its signing key and its signed DP privacy report.

The report is verified with the key it arrives with (binding key and report), must name the
certificate's identity (no enrolling on someone else's behalf), and its (ε, δ) must be within
the consortium policy — an agent whose reward model leaks more than the policy allows is
refused (403 ``privacy_budget_exceeded``), and the refusal is audited.

Lifetime budget (``policies.lifetime``): each signed report lists the member's earlier trainings
(``prior_runs``). The server composes them with this one and refuses an enrolment past the
policy's ``lifetime_epsilon`` (403 ``lifetime_budget_exceeded``); a report whose ledger leaves
out the training the server last enrolled this member with is refused too (403
``privacy_ledger_gap``), so wiping an agent's state does not reset its budget.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from crypto.canonical import canonical_json
from crypto.errors import IntegrityError, KeyFileError
from crypto.signing import VerifyKey
from policies.lifetime import LedgerRun, compose_epsilon
from server.admission import Caller
from server.rejections import Rejection
from server.routes.common import client_caller, services_of
from wire.messages import EnrolmentReport, EnrolRequest, EnrolResponse

router = APIRouter(prefix="/v1", tags=["agents"])


def _verify_key(b64: str) -> VerifyKey:
    try:
        return VerifyKey.from_bytes(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError, KeyFileError):
        raise Rejection(422, "bad_signing_key", "signing_public_key_b64: not a base64 raw Ed25519 public key") from None


def _privacy_report(raw: dict[str, Any], key: VerifyKey) -> EnrolmentReport:
    try:
        return EnrolmentReport.verified(raw, key.verify)
    except ValidationError as exc:
        details = "; ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        raise Rejection(422, "bad_privacy_report", f"privacy_report: {details}") from None
    except (binascii.Error, ValueError, IntegrityError):
        raise Rejection(400, "integrity_error",
                        "privacy_report: signature does not verify with signing_public_key_b64") from None


def _lifetime(report: EnrolmentReport, previous: dict[str, Any] | None, policy: Any) -> tuple[float, int, str]:
    """(lifetime ε with this run, number of runs, accountant) from the signed report's ledger; see the module doc.

    A report without DP-SGD details (older agents, test doubles) counts as one run of its own ε,
    and only while the policy sets no lifetime cap.
    """
    extra = report.model_extra or {}
    if "steps" not in extra and policy.lifetime_epsilon is None:
        return report.epsilon, 1, str(extra.get("accountant", "unstated"))
    try:
        prior = [LedgerRun.model_validate(run) for run in extra.get("prior_runs") or []]
        this = LedgerRun(report_sha256=extra["local_report_sha256"], created_at=extra["created_at"],
                         epsilon=report.epsilon, delta=report.delta, noise_multiplier=extra["noise_multiplier"],
                         sample_rate=extra["sample_rate"], steps=extra["steps"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise Rejection(422, "bad_privacy_report", f"privacy_report: unreadable lifetime ledger: {exc}"[:500]) \
            from None
    if previous is not None:
        last = json.loads(previous["privacy_report"]).get("local_report_sha256")
        if last is not None and last not in {run.report_sha256 for run in (*prior, this)}:
            raise Rejection(403, "privacy_ledger_gap",
                            f"privacy report's ledger omits the training {last[:16]}… this member enrolled with")
    accountant = policy.accountant
    epsilon, used = compose_epsilon([*prior, this], delta=policy.max_delta, accountant=accountant)
    return epsilon, len(prior) + 1, used


@router.post("/enrol", response_model=EnrolResponse, summary="Enrol an agent (signed privacy report)")
def enrol_agent(body: EnrolRequest, request: Request,
                caller: Annotated[Caller, Depends(client_caller)]) -> EnrolResponse:
    services = services_of(request)
    policy = services.policy
    key = _verify_key(body.signing_public_key_b64)
    report = _privacy_report(body.privacy_report, key)
    if report.identity != caller.identity:
        raise Rejection(403, "identity_mismatch",
                        f"privacy report names {report.identity!r} but the certificate is {caller.identity!r}")
    if report.epsilon > policy.max_epsilon or report.delta > policy.max_delta:
        raise Rejection(403, "privacy_budget_exceeded",
                        f"privacy report (epsilon={report.epsilon}, delta={report.delta}) exceeds the policy "
                        f"budget (epsilon <= {policy.max_epsilon}, delta <= {policy.max_delta})")
    lifetime, runs, accountant = _lifetime(report, services.state.agent(caller.identity), policy)
    limit = policy.lifetime_epsilon
    if limit is not None and lifetime > limit:
        raise Rejection(403, "lifetime_budget_exceeded",
                        f"{runs} DP training(s) compose to lifetime epsilon {lifetime:.3f} ({accountant.upper()}, "
                        f"delta={policy.max_delta:g}), past the policy's lifetime_epsilon {limit}")
    now = services.clock()
    services.state.upsert_agent(
        caller.identity, signing_key_b64=body.signing_public_key_b64, architecture=body.architecture,
        epsilon=report.epsilon, delta=report.delta, privacy_report=body.privacy_report, now=now,
    )
    services.audit.record(caller.identity, "agent.enrolled", {
        "architecture": body.architecture, "epsilon": report.epsilon, "delta": report.delta,
        "signing_key_sha256": key.fingerprint(), "lifetime_epsilon": lifetime, "lifetime_runs": runs,
        "lifetime_accountant": accountant,
        "privacy_report_sha256": hashlib.sha256(canonical_json(body.privacy_report)).hexdigest(),
        "noise_source": str(body.privacy_report.get("noise_source", ""))[:200] or None,
    })
    # No calibration batch: the trainer measures each agent's scale itself in a ``calibrate``
    # round (server/trainer.py), from the very scores it later fuses. The fields stay empty.
    return EnrolResponse(
        agent=caller.identity, privacy_mode=policy.privacy_mode, policy_digest=policy.digest,
        server_signing_public_key_b64=base64.b64encode(services.signing_key.verify_key().raw()).decode("ascii"),
        context_sha256=services.privacy.public_context.sha256 if services.privacy.public_context else None,
        calibration=[], calibration_prompts=[],
    )
