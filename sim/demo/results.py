"""What a finished demo run produced, read back from the parties' files as an auditor would.

Nothing here trusts the demo process's own memory of the run: ε comes from each agent's
*signed* privacy report (verified with the agent's key), the LoRA movement from the server's
audit log and, independently, from the saved adapter, the audit verdicts from
:mod:`sim.demo.reconcile`. ``results["ok"]`` is the conjunction of every check the demo promises.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from sim.demo.provision import AgentFiles, Deployment
from sim.demo.reconcile import Reconciliation, reconcile
from sim.errors import ReconcileError

STEP_KEYS = ("step", "reward", "reward_std", "kl", "agents_answered", "round_skipped", "loss")


def _verify_key(signing_key_file: Path) -> Any:
    """The public half of a party's Ed25519 key file (the operator hands it to the auditor)."""
    from crypto.errors import CryptoError
    from crypto.signing import SigningKey

    try:
        return SigningKey.load(signing_key_file).verify_key()
    except (CryptoError, OSError) as exc:
        raise ReconcileError(f"{signing_key_file}: cannot load the party's key: {exc}") from None


def reconcile_run(consortium: Deployment) -> Reconciliation:
    """Verify the server's, key holder's and agents' logs; reconcile the agents' receipts."""
    data = consortium.server_data
    agents = {a.identity: (a.state_dir / "audit", _verify_key(a.state_dir / "signing-key.pem"))
              for a in consortium.agents}
    extra = {}
    if consortium.keyholder_data is not None:
        extra["keyholder"] = (consortium.keyholder_data / "audit",
                              _verify_key(consortium.keyholder_data / "keyholder-signing.pem"))
    return reconcile(data / "audit", _verify_key(data / "server-signing.pem"), agents, extra)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _privacy(agent: AgentFiles, out: Path, policy: Any) -> dict[str, Any]:
    from client_agent.privacy_report import SignedPrivacyReport

    source = agent.state_dir / "privacy-report.json"
    signed = SignedPrivacyReport.from_json(source.read_text("utf-8"), source=str(source))
    report = signed.verify(_verify_key(agent.state_dir / "signing-key.pem"))
    copy = out / "privacy" / f"{agent.spec.name}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, copy)
    return {"name": agent.spec.name, "identity": agent.identity, "style": agent.spec.style, "arch": agent.spec.arch,
            "epsilon_budget": agent.epsilon, "epsilon_spent": report.epsilon, "delta": report.delta,
            "accountant": report.accountant, "noise_multiplier": report.noise_multiplier, "steps": report.steps,
            "dataset_size": report.dataset_size, "insecure_pilot": report.insecure_pilot,
            "noise_source": report.noise_source, "lifetime_epsilon": report.lifetime_epsilon,
            "within_budget": report.epsilon <= agent.epsilon + 1e-9 and report.epsilon <= policy.privacy.max_epsilon
            and report.delta <= policy.privacy.max_delta, "privacy_report": str(copy)}


def _server_entries(audit_dir: Path) -> list[dict[str, Any]]:
    path = audit_dir / "entries.jsonl"
    return [json.loads(line)["entry"] for line in path.read_text("utf-8").splitlines() if line.strip()]


def adapter_lora_b_norm(adapter: Path) -> float:
    """L2 norm of the saved adapter's LoRA ``B`` matrices: PEFT starts them at zero, so > 0 means trained."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return math.sqrt(sum(float(t.float().pow(2).sum()) for name, t in weights.items() if "lora_B" in name))


def _training(consortium: Deployment) -> dict[str, Any]:
    out = consortium.training_out
    report = json.loads((out / "training_report.json").read_text("utf-8"))
    steps = []
    metrics = out / "metrics.jsonl"
    for line in metrics.read_text("utf-8").splitlines() if metrics.is_file() else []:
        record = json.loads(line)
        steps.append({**{k: record.get(k) for k in STEP_KEYS},
                      **{k: v for k, v in record.items() if k.startswith("router_weight/")}})
    finished = [e for e in _server_entries(consortium.server_data / "audit") if e["action"] == "training.finished"]
    fit = report.get("router_fit") or {}
    return {
        "agents": report.get("agents"), "calibration": report.get("calibration"), "notes": report.get("notes", []),
        "steps": steps,
        "kl_finite": bool(steps) and all(isinstance(s["kl"], int | float) and math.isfinite(s["kl"]) for s in steps),
        "lora_delta_norm": finished[-1]["details"].get("lora_delta_norm") if finished else None,
        "adapter_lora_b_norm": adapter_lora_b_norm(out / "grpo" / "final"),
        "adapter": str(out / "grpo" / "final"),
        "router": {"digest": report.get("router_digest"), "fitted": bool(fit),
                   "mean_weights_by_domain": fit.get("mean_weights_by_domain"),
                   "val_accuracy": fit.get("val_accuracy")},
    }


def collect_results(consortium: Deployment, *, options: Any, model: dict[str, Any], exits: dict[str, Any],
                    summaries: dict[str, Any], reconciliation: Reconciliation, evaluation: Any,
                    timings: dict[str, float]) -> dict[str, Any]:
    """The whole ``results.json`` document."""
    policy = consortium.policy
    agents = [_privacy(a, consortium.out, policy) for a in consortium.agents]
    for agent in agents:
        agent["run"] = summaries.get(agent["name"], {})
    training = _training(consortium)
    audit = reconciliation.to_dict()
    checks = {
        "audit_verification": audit["verification_passed"], "reconciliation": audit["reconciliation_passed"],
        "clean_stop": all(e["exit"] == 0 and not e["killed"] for e in exits.values()),
        "lora_moved": (training["lora_delta_norm"] or 0) > 0 and training["adapter_lora_b_norm"] > 0,
        "kl_finite": training["kl_finite"], "epsilon_within_budget": all(a["within_budget"] for a in agents),
    }
    results = {
        "ok": all(checks.values()), "checks": checks, "mode": "quick" if options.quick else "default",
        "seed": options.seed, "out": str(consortium.out), "insecure": consortium.insecure,
        "policy": {"source": str(consortium.source_policy), "file": str(consortium.policy_path),
                   "consortium": policy.consortium, "privacy_mode": policy.privacy.mode, "digest": policy.digest(),
                   "max_epsilon": policy.privacy.max_epsilon, "max_delta": policy.privacy.max_delta,
                   "pilot": policy.pilot},
        "model": model, "agents": agents, "training": training,
        "evaluation": evaluation.to_dict() if evaluation is not None else None, "audit": audit,
        "processes": exits, "timings_s": timings,
        "files": {"logs": str(consortium.out / "logs"), "server_audit": str(consortium.server_data / "audit"),
                  "agent_audits": {a.spec.name: str(a.state_dir / "audit") for a in consortium.agents},
                  "keyholder_audit": str(consortium.keyholder_data / "audit") if consortium.keyholder_data else None,
                  "privacy_reports": str(consortium.out / "privacy")},
    }
    return dict(_json_safe(results))
