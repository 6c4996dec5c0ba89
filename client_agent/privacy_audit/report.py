"""What an audit leaves behind: the printed table, ``privacy-audit.json`` and a ``privacy.audit`` entry.

Why the member's own audit log: its entries are signed and Merkle-chained, so an auditor can see
that (and when) the member checked its training, with the digest of the JSON results it kept.
The results are statistics of models trained on the private pairs and are *not* DP outputs:
they stay with the member (nothing here is sent to the server).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client_agent.privacy_audit.audit import AuditOutcome
from client_agent.privacy_audit.stats import OperatingPoint

SCHEMA = "mor-privacy-audit/1"
ACTION = "privacy.audit"
METHOD = (
    "membership inference on canary pairs using only scores (margin chosen - rejected); a random half of the "
    "canaries trains the target, every canary trains half of the shadows; attacks: score threshold, LiRA "
    "(per-canary Gaussian means, pooled variances); operating point: the largest TPR with FPR <= target; "
    "empirical epsilon >= log((TPR - delta) / FPR), lower confidence bound from two-sided Clopper-Pearson "
    "intervals (TPR lower end, FPR upper end; union bound)")


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _row(kind: str, attack: str, auc: float, point: OperatingPoint, claimed: str) -> str:
    lo, hi = point.tpr_interval
    return (f"{kind:11} {attack:9} {auc:5.3f} {point.target_fpr * 100:6.1f}% "
            f"{point.tpr:6.3f} [{lo:.3f}, {hi:.3f}] {point.false_positives:>3}/{point.non_members:<4} "
            f"{'-' if point.false_positives == 0 else _eps(point.epsilon_point):>6} "
            f"{_eps(point.epsilon_lower):>6} {_eps(point.epsilon_ceiling):>6} "
            f"{claimed:>7}")


def render(outcome: AuditOutcome) -> str:
    """The audit table, then one line per verdict."""
    confidence = f"{outcome.settings.confidence:.0%}"
    lines = [
        f"{'model':11} {'attack':9} {'AUC':5} {'FPR':>7} {'TPR':>6} {confidence + ' CI':>14} {'FP':>8} "
        f"{'eps^':>6} {'eps_lo':>6} {'max':>6} {'claimed':>7}",
    ]
    for kind, audit in outcome.models.items():
        claimed = f"{outcome.claimed_epsilon:g}" if kind == "dp" else "none"
        for name, result in audit.attacks.items():
            lines += [_row(kind, name, result.auc, point, claimed) for point in result.points]
    lines.append(f"eps^: log((TPR - delta)/FPR) at the measured rates ('-': no false positive, unbounded); "
                 f"eps_lo: its {confidence} lower bound "
                 f"(Clopper-Pearson); max: the largest eps_lo {outcome.settings.canaries} canaries can show; "
                 f"delta={outcome.delta:g}")
    dp_lo = outcome.models["dp"].best_epsilon_lower()
    lines.append(f"DP model: empirical epsilon >= {_eps(dp_lo)} ({confidence} confidence); claimed "
                 f"{outcome.claimed_epsilon:g}, spent {outcome.spent_epsilon:.4f}: "
                 + ("consistent with the claim" if outcome.claim_holds else "CLAIM CONTRADICTED"))
    if outcome.contrast_leaks_more is not None:
        plain_lo = outcome.models["non-private"].best_epsilon_lower()
        lines.append(f"non-private contrast: empirical epsilon >= {_eps(plain_lo)}; leaks measurably more than DP "
                     f"(TPR interval at 1% FPR above the DP one): {'yes' if outcome.contrast_leaks_more else 'no'}")
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def results(outcome: AuditOutcome, *, agent_id: str, arch: str, params: dict[str, Any],
            now: datetime | None = None) -> dict[str, Any]:
    """The JSON document (infinite ε as ``null``)."""
    settings = outcome.settings
    return _finite({
        "schema": SCHEMA, "created_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "agent_id": agent_id, "arch": arch, "params": params, "data_pairs": outcome.data_pairs,
        "canaries": settings.canaries, "shadows": settings.shadows, "confidence": settings.confidence,
        "canary_seed": outcome.canary_seed, "membership_seed": outcome.membership_seed, "method": METHOD,
        "claimed": {"epsilon": outcome.claimed_epsilon, "spent_epsilon": outcome.spent_epsilon,
                    "delta": outcome.delta},
        "claim_holds": outcome.claim_holds, "contrast_leaks_more": outcome.contrast_leaks_more,
        "models": {kind: {"empirical_epsilon_lower": audit.best_epsilon_lower(), "trainings": audit.trainings,
                          "attacks": {name: r.as_dict() for name, r in audit.attacks.items()},
                          "target_margins": audit.margins[0].tolist()}
                   for kind, audit in outcome.models.items()},
        "target_members": outcome.membership[0].astype(int).tolist(),
    })


def write_json(document: dict[str, Any], path: Path) -> str:
    """Write atomically; return the SHA-256 of the bytes written (it goes into the audit log)."""
    from client_agent.local_model import write_atomically

    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    write_atomically(path, data)
    return hashlib.sha256(data).hexdigest()


def log_entry(outcome: AuditOutcome, document: dict[str, Any]) -> dict[str, Any]:
    """The ``details`` of the ``privacy.audit`` entry: the verdicts and every model's TPRs, not the margins."""
    def summary(kind: str) -> dict[str, Any]:
        audit = outcome.models[kind]
        return {name: {"auc": round(r.auc, 4), **{f"tpr_at_{p.target_fpr:g}": round(p.tpr, 4) for p in r.points},
                       "epsilon_lower": r.best_epsilon_lower()} for name, r in audit.attacks.items()}

    return _finite({"canaries": outcome.settings.canaries, "shadows": outcome.settings.shadows,
                    "confidence": outcome.settings.confidence, "claimed_epsilon": outcome.claimed_epsilon,
                    "spent_epsilon": outcome.spent_epsilon, "delta": outcome.delta,
                    "claim_holds": outcome.claim_holds, "contrast_leaks_more": outcome.contrast_leaks_more,
                    "models": {kind: summary(kind) for kind in outcome.models}, "schema": document["schema"]})
