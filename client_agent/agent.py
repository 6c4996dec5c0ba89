"""The agent loop (``mor client run``): enrol, calibrate, then long-poll, score, seal, submit, keep receipts.

One pass, in order::

    enrol (signed privacy report)  -> check the server's policy digest, privacy mode, signing key
    GET /v1/context (not tls-only)  -> the public CKKS context, checked against the enrolment's digest
    calibration batch               -> POST mean/std (post-processing of the DP model on public data)
    resubmit sealed, unacknowledged envelopes from the ledger (a crash left them there)
    loop: long-poll a task -> local limits -> score -> seal (CKKS, or signed plain under tls-only)
          -> ledger commit (fsync) -> submit -> verify the signed receipt -> ``receipt.stored``
          in the agent's own audit log -> inclusion proof against the server's signed checkpoint

Shutdown: SIGTERM/SIGINT set a stop flag. A long poll or a retry wait is abandoned at once;
a task being scored/sealed/submitted is finished (or, if the server is unreachable, left
sealed in the ledger for the next start). Then ``agent.stopped`` is logged, the audit log
signs its final checkpoint, and the process exits 0.

Local policy, enforced whatever the server asks: the task's privacy mode must be the
consortium policy's (a server must not downgrade ``ckks`` to clear text), at most
``max_items_per_task`` items, at most ``max_items_per_day`` items scored per UTC day, and no
work on expired tasks. Refusals are logged (``task.refused``) and recorded in the ledger.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx

from audit import AuditLog
from client_agent.config import AgentConfig
from client_agent.errors import (
    AgentConfigError,
    LocalPolicyRefusal,
    ScoringError,
    ServerRefusedError,
    ServerTrustError,
    ServerUnreachableError,
)
from client_agent.ledger import LedgerEntry, TaskLedger, utc_day
from client_agent.local_model import load_trained, wire_privacy_report
from client_agent.local_policy import check_task_allowed, task_payload_digest
from client_agent.privacy_report import SignedPrivacyReport
from client_agent.receipts import receipt_sha256, verify_receipt, verify_receipt_inclusion
from client_agent.rewards.base import RewardModel
from client_agent.scoring import calibrate, calibration_report, score_items, seal_for_mode, within_policy_range
from client_agent.transport import RetryPolicy, ServerChannel, ServerPin
from crypto.ckks import PublicContext, load_public_context
from crypto.envelope import Envelope
from crypto.errors import CryptoError
from crypto.key_binding import bind_signing_key
from crypto.signing import SigningKey, VerifyKey
from crypto.tls import client_ssl_context
from crypto.tls_reload import TlsReloader
from wire.messages import EnrolRequest, EnrolResponse, PrivacyMode, ScoringTask

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVER_KEY_META = "server_signing_key_b64"


def open_agent_audit(directory: Path, signing_key: SigningKey, *, origin: str, policy: Any,
                     now: Callable[[], float] = time.time) -> AuditLog:
    """The agent's own log, signing a checkpoint every ``policy.audit.checkpoint_every`` entries.

    Why the policy's interval and not only at shutdown: entries after the last checkpoint can be
    cut without trace, so a log sealed only on close could be rolled back to its start.
    """
    return AuditLog.open(directory, signing_key=signing_key, origin=origin, now=now,
                         checkpoint_every=policy.audit.checkpoint_every)


class _Interrupted(BaseException):
    """Raised by the signal handler inside a network wait, to unwind it (never escapes :meth:`Agent.run`)."""


@dataclass(frozen=True)
class Session:
    """What enrolment established: whose signatures to trust and how to seal."""

    server_key: VerifyKey
    privacy_mode: PrivacyMode
    context: PublicContext | None
    enrolment: EnrolResponse


@dataclass
class RunSummary:
    receipted: int = 0
    refused: int = 0
    abandoned: int = 0
    resubmitted: int = 0
    stop_reason: str = "stopped"


class Agent:
    """One agent process's state; build with :meth:`open`, then :meth:`run`."""

    def __init__(self, *, config: AgentConfig, identity: str, signing_key: SigningKey, model: RewardModel,
                 report: SignedPrivacyReport, channel: ServerChannel, audit: AuditLog, ledger: TaskLedger,
                 policy: Any, clock: Callable[[], float] = time.time, progress: bool = False) -> None:
        self.config, self.identity, self.signing_key, self.model, self.report = config, identity, signing_key, \
            model, report
        self.channel, self.audit, self.ledger, self.policy = channel, audit, ledger, policy
        self.clock, self.progress = clock, progress
        self.stop: threading.Event = channel.stop
        self.summary = RunSummary()
        self._interruptible = False

    @classmethod
    def open(cls, config: AgentConfig, *, clock: Callable[[], float] = time.time, progress: bool = False) -> Agent:
        """Load key, model + report (checked together), TLS, audit log and ledger from ``config``."""
        identity = config.identity()
        signing_key = SigningKey.load(config.signing_key_path)
        model, report = load_trained(config, signing_key, identity=identity)
        net, tls = config.network, config.tls
        context = client_ssl_context(tls.cert, tls.key, tls.ca, tls.crl)
        channel = ServerChannel(
            config.agent.server_url, context,
            ServerPin(config.agent.server_identity, config.agent.server_cert_sha256),
            retry=RetryPolicy(net.max_attempts, net.retry_base_s, net.retry_max_s),
            timeout=httpx.Timeout(net.read_timeout_s, connect=net.connect_timeout_s),
            reloader=TlsReloader(context, cert=tls.cert, key=tls.key, crl=tls.crl, label=identity))
        policy = config.consortium_policy()
        audit = open_agent_audit(config.audit_dir, signing_key, origin=identity, policy=policy, now=clock)
        try:
            ledger = TaskLedger.open(config.ledger_path)
        except BaseException:
            audit.close()
            raise
        return cls(config=config, identity=identity, signing_key=signing_key, model=model, report=report,
                   channel=channel, audit=audit, ledger=ledger, policy=policy, clock=clock, progress=progress)

    def close(self) -> None:
        """Final audit checkpoint; release the log, the ledger and the connections."""
        try:
            self.audit.close()
        finally:
            self.ledger.close()
            self.channel.close()

    def record(self, action: str, *, outcome: str = "ok", task: ScoringTask | LedgerEntry | None = None,
               digests: dict[str, str] | None = None, details: dict[str, Any] | None = None) -> None:
        self.audit.append(actor=self.identity, action=action, outcome=outcome,
                          round_id=task.round_id if task else None, task_id=task.task_id if task else None,
                          digests=digests, details=details)

    # -- signals: a wait may be abandoned, a task never half-done --------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s: finishing the current step, then stopping", signal.Signals(signum).name)
        self.stop.set()
        if self._interruptible:
            self._interruptible = False
            raise _Interrupted()

    def _wait_on(self, call: Callable[..., T], *args: Any) -> T:
        """Run a network call that a stop signal may abandon (it must write nothing locally)."""
        if self.stop.is_set():
            raise _Interrupted()
        self._interruptible = True
        try:
            return call(*args)
        finally:
            self._interruptible = False

    # -- enrolment and calibration -------------------------------------------------------------------
    def enrol(self) -> Session:
        tls = self.config.tls
        try:  # lets the fused-only key holder check our envelope key against the CA, not the server's word
            binding = bind_signing_key(self.signing_key.verify_key(), cert_pem=tls.cert.read_bytes(),
                                       tls_key_pem=tls.key.read_bytes())
        except (OSError, CryptoError) as exc:
            raise AgentConfigError(f"[tls] cert/key: cannot bind the envelope signing key: {exc}") from None
        report = wire_privacy_report(self.report, identity=self.identity, signing_key=self.signing_key,
                                     disclose_architecture=self.config.model.disclose_architecture,
                                     key_binding=binding)
        request = EnrolRequest(
            signing_public_key_b64=base64.b64encode(self.signing_key.verify_key().raw()).decode("ascii"),
            privacy_report=report, architecture=report["model_arch"])
        reply = self._wait_on(self.channel.enrol, request)
        self._check_enrolment(reply)
        server_key = VerifyKey.from_bytes(base64.b64decode(reply.server_signing_public_key_b64))
        context = None
        if reply.privacy_mode != "tls-only":
            data = self._wait_on(self.channel.public_context)
            try:
                context = load_public_context(data)
            except CryptoError as exc:
                raise ServerTrustError(f"GET /v1/context: not a usable public CKKS context: {exc}") from None
            if context.sha256 != reply.context_sha256:
                raise ServerTrustError(f"GET /v1/context: context SHA-256 {context.sha256} differs from the "
                                       f"enrolment's {reply.context_sha256}")
        self.record("agent.enrolled", digests={"server_key_sha256": server_key.fingerprint(),
                                               "policy": reply.policy_digest,
                                               **({"context_sha256": context.sha256} if context else {})},
                    details={"privacy_mode": reply.privacy_mode, "epsilon": self.report.report.epsilon,
                             "delta": self.report.report.delta, "architecture_disclosed": report["model_arch"]})
        return Session(server_key, reply.privacy_mode, context, reply)

    def _check_enrolment(self, reply: EnrolResponse) -> None:
        policy_digest = self.policy.digest()
        if reply.agent != self.identity:
            raise ServerTrustError(f"server enrolled us as {reply.agent!r}; our certificate says {self.identity!r}")
        if reply.policy_digest != policy_digest:
            raise ServerTrustError(f"server enforces policy {reply.policy_digest}, ours ({self.config.agent.policy}) "
                                   f"is {policy_digest}: refusing to work under a different policy")
        if reply.privacy_mode != self.policy.privacy.mode:
            raise ServerTrustError(f"server privacy mode {reply.privacy_mode!r} is not the policy's "
                                   f"{self.policy.privacy.mode!r}")
        known = self.ledger.get_meta(SERVER_KEY_META)
        if known is None:
            self.ledger.set_meta(SERVER_KEY_META, reply.server_signing_public_key_b64)
        elif known != reply.server_signing_public_key_b64:
            raise ServerTrustError(f"the server's signing key changed since the first enrolment (stored in "
                                   f"{self.ledger.path}): receipts would no longer be checked against the key "
                                   "first trusted; refusing until the consortium confirms the rotation")

    def calibrate(self, session: Session) -> None:
        enrolment = session.enrolment
        if not enrolment.calibration:
            self.record("calibration.skipped", outcome="skipped", details={"reason": "no calibration batch sent"})
            return
        cal = calibrate(self.model, enrolment.calibration_prompts, enrolment.calibration,
                        batch_size=self.config.limits.score_batch_size,
                        max_pixels=self.config.limits.max_image_pixels, progress=self.progress)
        ack = self._wait_on(self.channel.report_calibration, calibration_report(cal))
        self.record("calibration.reported", details={"mean": cal.mean, "std": cal.std, "n": cal.n,
                                                     "server_audit_index": ack.audit_index})

    # -- tasks -------------------------------------------------------------------------------------
    def resume(self, session: Session) -> None:
        """Resubmit envelopes sealed before a crash — the same bytes, so the same nonce."""
        for entry in self.ledger.pending():
            log.info("resubmitting the sealed envelope of task %s", entry.task_id)
            self.summary.resubmitted += 1
            self._submit(entry, session)

    def check_limits(self, task: ScoringTask, session: Session, now: float) -> None:
        """Raise :class:`LocalPolicyRefusal` if the agent's own policy forbids this task."""
        check_task_allowed(task, session_mode=session.privacy_mode, policy=self.policy, limits=self.config.limits,
                           scored_today=self.ledger.items_scored_on(utc_day(now)), now=now)

    def handle(self, task: ScoringTask, session: Session) -> None:
        """One task: never scored twice (the ledger), refused if the local policy says so."""
        existing = self.ledger.get(task.task_id)
        if existing is not None:
            if existing.status == "sealed":
                self._submit(existing, session)
            else:  # the server re-delivers its oldest open task until the deadline: don't spin on it
                pause = max(0.0, min(task.deadline - self.clock(), self.config.network.poll_wait_s))
                log.info("task %s is already %s: not scored again (idle %.1fs)", task.task_id, existing.status, pause)
                self.stop.wait(pause)
            return
        now = self.clock()
        try:
            self.check_limits(task, session, now)
            scores = score_items(self.model, task.prompts, task.items, batch_size=self.config.limits.score_batch_size,
                                 max_pixels=self.config.limits.max_image_pixels, progress=self.progress)
        except LocalPolicyRefusal as exc:
            return self._refuse(task, exc.code, str(exc), now)
        except ScoringError as exc:
            return self._refuse(task, "bad_payload", str(exc), now)
        low, high = self.policy.scores.min, self.policy.scores.max
        values, outside = within_policy_range([float(v) for v in scores.tolist()], low, high)
        if outside:
            log.warning("task %s: %d raw scores outside the policy range [%s, %s], clipped to it", task.task_id,
                        outside, low, high)
        envelope = seal_for_mode(values, session.privacy_mode, session.context, signing_key=self.signing_key,
                                 sender=self.identity, round_id=task.round_id, task_id=task.task_id, now=self.clock(),
                                 payload_sha256=task_payload_digest(task))
        self.ledger.record_sealed(task_id=task.task_id, round_id=task.round_id, kind=task.kind, n_items=len(values),
                                  envelope=envelope.to_dict(), envelope_sha256=envelope.sha256(), now=now)
        self.record("task.sealed", task=task, digests={"envelope_sha256": envelope.sha256()},
                    details={"kind": task.kind, "n_items": len(values), "payload": envelope.kind,
                             "out_of_range": outside})
        entry = self.ledger.get(task.task_id)
        assert entry is not None
        self._submit(entry, session)

    def _refuse(self, task: ScoringTask, code: str, reason: str, now: float) -> None:
        log.warning("refusing task %s (%s): %s", task.task_id, code, reason)
        self.ledger.record_refused(task_id=task.task_id, round_id=task.round_id, kind=task.kind,
                                   n_items=len(task.items), reason=f"{code}: {reason}", now=now)
        self.record("task.refused", outcome="refused", task=task,
                    details={"code": code, "reason": reason, "n_items": len(task.items)})
        self.summary.refused += 1
        try:  # take it out of our queue on the server, or it is re-delivered until its deadline
            self.channel.decline(task.task_id, code, reason)
        except ServerRefusedError as exc:
            log.info("server did not take the decline of %s: %s %s", task.task_id, exc.status, exc.code)

    def _submit(self, entry: LedgerEntry, session: Session) -> None:
        assert entry.envelope is not None and entry.envelope_sha256 is not None
        try:
            receipt = self.channel.submit_envelope(Envelope.from_dict(entry.envelope))
        except CryptoError:  # the ledger's copy does not parse (edited on disk): nothing a server would take
            self.ledger.mark_abandoned(entry.task_id, "ledger envelope does not parse", self.clock())
            self.summary.abandoned += 1
            return
        except ServerRefusedError as exc:  # final for this envelope: never re-sealed under a new nonce
            self.ledger.mark_abandoned(entry.task_id, f"{exc.status} {exc.code}", self.clock())
            self.record("submission.refused", outcome="refused", task=entry,
                        details={"status": exc.status, "code": exc.code, "message": exc.server_message[:500]})
            self.summary.abandoned += 1
            return
        verify_receipt(receipt, session.server_key, agent=self.identity, task_id=entry.task_id,
                       round_id=entry.round_id, envelope_sha256=entry.envelope_sha256)
        self.ledger.mark_receipted(entry.task_id, receipt.model_dump(mode="json"), self.clock())
        self.record("receipt.stored", task=entry,
                    digests={"receipt_sha256": receipt_sha256(receipt), "envelope_sha256": entry.envelope_sha256,
                             "server_leaf_sha256": receipt.audit_leaf_sha256},
                    details={"receipt": receipt.model_dump(mode="json")})
        self.summary.receipted += 1
        try:
            proof = self._wait_on(self.channel.inclusion_proof, receipt.audit_index)
        except ServerRefusedError as exc:
            self.record("receipt.unproven", outcome="unproven", task=entry, details={"reason": str(exc)[:500]})
            return
        checkpoint = verify_receipt_inclusion(receipt, proof, session.server_key)
        self.record("receipt.proven", task=entry, digests={"server_root_sha256": checkpoint.root},
                    details={"audit_index": receipt.audit_index, "checkpoint_size": checkpoint.size})

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, *, max_tasks: int | None = None, install_signals: bool = True) -> RunSummary:
        """Serve until stopped (signal) or ``max_tasks`` tasks were handled; see the module docstring."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if install_signals else {}
        self.record("agent.started", details={"server_url": self.config.agent.server_url,
                                              "server_identity": self.config.agent.server_identity,
                                              "insecure_pilot": self.config.agent.insecure_pilot})
        try:
            session = self.enrol()
            self.calibrate(session)
            self.resume(session)
            handled = 0
            while not self.stop.is_set() and (max_tasks is None or handled < max_tasks):
                task = self._wait_on(self.channel.next_task, self.config.network.poll_wait_s)
                if task is not None:
                    self.handle(task, session)
                    handled += 1
            self.summary.stop_reason = "signal" if self.stop.is_set() else "max_tasks"
        except _Interrupted:
            self.summary.stop_reason = "signal"
        except ServerUnreachableError as exc:  # a retry wait cut short by a stop signal is a clean stop
            if not self.stop.is_set():
                self.summary.stop_reason = f"error: {exc}"[:500]
                raise
            self.summary.stop_reason = "signal"
        except Exception as exc:
            self.summary.stop_reason = f"error: {exc}"[:500]
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            s = self.summary
            self.record("agent.stopped", details={"reason": s.stop_reason, "receipted": s.receipted,
                                                  "refused": s.refused, "abandoned": s.abandoned,
                                                  "resubmitted": s.resubmitted})
        return self.summary
