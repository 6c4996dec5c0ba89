"""The agent's reward model on disk: train it under DP once, then load it, checked, for every run.

``train_reward_model`` is the whole of ``mor client train``: private pairs (a ``mor data
import --kind pairs`` dataset, or the original corpus layout) -> the configured architecture
-> :func:`client_agent.dp.train_private` within the agent's local budget *and* the
consortium maximum -> the model and its signed privacy report in the state directory.
``load_trained`` refuses a model and report that do not belong together (report signed by
another key, for another identity, or for other weights), so the agent can never enrol with
a privacy claim about a model it is not running.

What the server sees (:func:`wire_privacy_report`): the accounting fields of the report, the
model's weight digest and the digest of the full local report — not the architecture, unless
``[model].disclose_architecture`` says so (members' reward models stay opaque by default).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from client_agent.budget_ledger import LifetimeLedger
from client_agent.config import AgentConfig
from client_agent.dp import PrivacyBudget, PrivateTrainingResult, train_private
from client_agent.errors import PrivacyReportError
from client_agent.privacy_report import PrivacyReport, SignedPrivacyReport
from client_agent.rewards.base import RewardModel
from client_agent.rewards.registry import build_reward_model as build_from_registry
from client_agent.rewards.registry import load_reward_model
from corpus.types import PreferencePair
from crypto.errors import IntegrityError
from crypto.signing import SigningKey
from policies.lifetime import composition_statement
from wire.messages import EnrolmentReport

UNDISCLOSED = "undisclosed"


def build_reward_model(config: AgentConfig) -> RewardModel:
    """A fresh, untrained model of the configured architecture (built-in, HF checkpoint or entry point)."""
    return build_from_registry(config.model.arch, dict(config.model.params))


def train_configured(config: AgentConfig, pairs: Sequence[PreferencePair], *, progress: bool = True,
                     approve: Callable[[float, float, int], None] | None = None,
                     ) -> tuple[RewardModel, PrivateTrainingResult]:
    """A fresh model of the configured architecture, DP-trained on ``pairs`` with the config's settings.

    The one place that turns ``agent.toml`` into a :func:`train_private` call, so that ``mor client
    train`` and the empirical privacy audit (:mod:`client_agent.privacy_audit`), which retrains on
    the private pairs plus canaries, audit the very training a member runs.
    """
    import torch

    policy = config.consortium_policy()
    model = build_reward_model(config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.training.lr)
    result = train_private(
        model=model, optimizer=optimizer, train_pairs=pairs,
        budget=PrivacyBudget(config.privacy.epsilon, config.privacy.delta),
        max_budget=PrivacyBudget(policy.privacy.max_epsilon, policy.privacy.max_delta),
        epochs=config.training.epochs, batch_size=min(config.training.batch_size, len(pairs)),
        max_grad_norm=config.training.max_grad_norm, accountant=config.privacy.accountant,
        secure_mode=not config.agent.insecure_pilot, insecure_pilot=config.agent.insecure_pilot,
        clipping=config.training.clipping, seed=config.training.seed, progress=progress, approve=approve,
    )
    return model, result


def train_reward_model(config: AgentConfig, *, identity: str, signing_key: SigningKey, progress: bool = True,
                       now: datetime | None = None, ledger: LifetimeLedger | None = None,
                       ) -> tuple[RewardModel, SignedPrivacyReport, PrivateTrainingResult]:
    """Train under DP on ``[agent].data_dir``; save the model and the signed report in ``state_dir``.

    With a ``ledger`` the run is refused before its first step if it would pass the policy's
    lifetime ε, and the report carries the earlier runs and the composed lifetime ε.
    """
    from corpus.dataset import load_pair_dataset

    pairs = load_pair_dataset(config.agent.data_dir).pairs
    model, result = train_configured(config, pairs, progress=progress,
                                     approve=ledger.approve if ledger is not None else None)
    model.save(config.model_dir)
    lifetime = None
    if ledger is not None:
        total, used = ledger.spent((result.noise_multiplier, result.sample_rate, result.steps))
        lifetime = (total, composition_statement(accountant=used, delta=ledger.delta))
    signed = PrivacyReport.from_training(result, agent_id=identity, model_digest=model.model_digest(), now=now,
                                         prior_runs=ledger.runs if ledger is not None else (),
                                         lifetime=lifetime).sign(signing_key)
    write_atomically(config.privacy_report_path, signed.to_json().encode())
    return model, signed, result


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, then rename: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_report(config: AgentConfig, signing_key: SigningKey, *, identity: str) -> SignedPrivacyReport:
    """The signed report in ``state_dir``, verified as this agent's own."""
    path = config.privacy_report_path
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise PrivacyReportError(f"{path}: no privacy report: run `mor client train` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrivacyReportError(f"{path}: cannot read: {exc}") from None
    signed = SignedPrivacyReport.from_json(text, source=str(path))
    try:
        report = signed.verify(signing_key.verify_key())
    except IntegrityError:
        raise PrivacyReportError(f"{path}: not signed by this agent's signing key ({config.signing_key_path})") \
            from None
    if report.agent_id != identity:
        raise PrivacyReportError(f"{path}: report is for {report.agent_id!r}, this agent is {identity!r}")
    return signed


def load_trained(config: AgentConfig, signing_key: SigningKey, *, identity: str
                 ) -> tuple[RewardModel, SignedPrivacyReport]:
    """The trained model and its report; refuses a pair that does not belong together."""
    signed = load_report(config, signing_key, identity=identity)
    model = load_reward_model(config.model_dir, entry_point=config.model.arch if ":" in config.model.arch else None)
    if model.model_digest() != signed.report.model_digest:
        raise PrivacyReportError(f"{config.privacy_report_path}: report is for model {signed.report.model_digest[:16]}…"
                                 f" but {config.model_dir} holds {model.model_digest()[:16]}… (retrain)")
    return model, signed


def wire_privacy_report(signed: SignedPrivacyReport, *, identity: str, signing_key: SigningKey,
                        disclose_architecture: bool, key_binding: dict[str, str] | None = None) -> dict[str, Any]:
    """The report as ``wire.messages.EnrolmentReport`` (signed by :meth:`EnrolmentReport.signed`).

    ``key_binding`` (:func:`crypto.key_binding.bind_signing_key`) travels inside the report so
    the server stores it with the enrolment and can hand it to the fused-only key holder, which
    checks it against the consortium CA itself.
    """
    fields = signed.report.model_dump(mode="json")
    fields.pop("agent_id")
    if not disclose_architecture:
        fields["model_arch"] = UNDISCLOSED
    body: dict[str, Any] = {
        "identity": identity, **fields,
        "local_report_sha256": hashlib.sha256(signed.to_json().encode()).hexdigest(),
    }
    if key_binding is not None:
        body["key_binding"] = key_binding
    return EnrolmentReport.signed(body, signing_key.sign)
