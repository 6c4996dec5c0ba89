"""``mor audit report``: verify every log, reconcile every receipt, and judge what the logs say.

The result is one plain JSON-able dict (written as ``report.json`` and rendered as
``report.html`` by :mod:`audit.report.html`). Its ``verdict.failures`` lists everything that
makes the exit code non-zero:

* a log that fails verification (or has an unsealed tail) under its key;
* a receipt an agent holds that the server's log does not bear out (:mod:`audit.reconcile`);
* a key that two logs disagree on (an agent enrolled with another server key; the server
  recorded another signing key for a member than the one its log is signed with);
* a policy file that is not the one the server's log says was in force;
* a member whose ε exceeds the policy's budget, or a decryption the privacy mode does not allow,
  or a server log that cites key-holder decryptions the key holder's log does not hold.

``flags`` (shown in red, not failures by themselves) are protections switched off: a pilot
policy, tls-only, an agent's pilot noise (seeded PRNG), and any log key nothing corroborates.

Keys: a key given out of band is used as is; otherwise the log's own ``log_public_key.pem`` is
used and *cross-checked* — the server's key against the ``server_key_sha256`` each agent logged
at enrolment, each agent's key against the ``signing_key_sha256`` the server logged — so a
rewritten log with a swapped key file fails unless every other party's log was rewritten too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditConfigError
from audit.reconcile import agent_receipts, verified_entries, verify_party
from audit.records import checkpoint_from_obj
from audit.report.facts import agent_facts, ca_facts, decryption_facts, member_facts, server_facts
from audit.storage import CHECKPOINTS, PUBLIC_KEY
from crypto.errors import CryptoError
from crypto.signing import VerifyKey


@dataclass(frozen=True)
class LogInput:
    """One log to report on; ``key``: its writer's public key obtained out of band (None: use the log's copy)."""

    party: str  # server | agent | keyholder | ca
    directory: Path
    key: VerifyKey | None = None


@dataclass(frozen=True)
class PolicyTerms:
    """What the report needs of the consortium policy the auditor holds (``policies.Policy``)."""

    source: str
    digest: str
    mode: str
    max_epsilon: float
    lifetime_epsilon: float | None
    public_rounds_per_agent: bool
    insecure: list[str] = field(default_factory=list)


@dataclass
class _Log:
    party: str
    data: dict[str, Any]
    key: VerifyKey
    entries: list[dict[str, Any]]
    state: Any


def _open(inp: LogInput, index: int) -> _Log:
    key, source = inp.key, "out of band"
    if not inp.directory.is_dir():
        raise AuditConfigError(f"{inp.party} log {inp.directory}: no such directory")
    if key is None:
        try:
            key, source = VerifyKey.load(inp.directory / PUBLIC_KEY), "the log's own copy"
        except (CryptoError, OSError) as exc:
            raise AuditConfigError(f"{inp.directory}: no public key given and the log's {PUBLIC_KEY} is unusable "
                                   f"({exc})") from None
    check, state, report = verify_party(f"{inp.party} log {index}", inp.directory, key)
    bad = {p.line for p in report.problems if p.file == CHECKPOINTS}
    timeline: list[dict[str, Any]] = []
    for line_no, raw in enumerate(state.files[CHECKPOINTS].lines, 1):
        try:
            cp = checkpoint_from_obj(json.loads(raw))
        except (ValueError, RecursionError):  # the line's own problem is in the verification findings
            cp = "unparseable"
        if isinstance(cp, str):
            timeline.append({"line": line_no, "ok": False, "size": None, "time": None, "root": None})
        else:
            timeline.append({"line": line_no, "ok": line_no not in bad, "size": cp.size, "time": cp.time,
                             "root": cp.root})
    entries = verified_entries(state)
    data = {"party": inp.party, "directory": str(inp.directory), "origin": state.origin, "ok": check.ok,
            "entries": check.entries, "checkpoints": check.checkpoints, "uncovered": check.uncovered,
            "problems": check.problems, "key_sha256": key.fingerprint(), "key_source": source,
            "key_corroborated_by": [], "first_time": entries[0]["time"] if entries else None,
            "last_time": entries[-1]["time"] if entries else None, "timeline": timeline}
    return _Log(inp.party, data, key, entries, state)


def _corroborate(server: _Log, agents: list[_Log], members: dict[str, dict[str, Any]], failures: list[str]) -> None:
    for agent in agents:
        identity = agent.data["origin"]
        for digest in sorted(agent.data["facts"]["server_key_sha256"]):
            if digest == server.key.fingerprint():
                server.data["key_corroborated_by"].append(f"{identity} (enrolment)")
            else:
                failures.append(f"{identity} enrolled with server key {digest[:16]}…, but the server log is signed "
                                f"with {server.key.fingerprint()[:16]}…")
        recorded = {e.get("signing_key_sha256") for e in members.get(identity, {}).get("enrolments", [])} - {None}
        if agent.key.fingerprint() in recorded:
            agent.data["key_corroborated_by"].append("the server log (enrolment)")
        elif recorded:
            failures.append(f"{identity}: its log is signed with {agent.key.fingerprint()[:16]}…, the server "
                            f"recorded {', '.join(sorted(d[:16] + '…' for d in recorded))} at its enrolment")


def _judge_members(members: dict[str, dict[str, Any]], agents: list[_Log], policy: PolicyTerms | None,
                   failures: list[str], flags: list[str]) -> list[dict[str, Any]]:
    by_identity = {a.data["origin"]: a for a in agents}
    out = []
    for identity, m in sorted(members.items()):
        agent = by_identity.get(identity)
        facts = agent.data["facts"] if agent else None
        last = m["enrolments"][-1] if m["enrolments"] else {}
        accepted_tasks = m.pop("accepted_tasks")
        row = {**m, "epsilon": last.get("epsilon"), "lifetime_epsilon": last.get("lifetime_epsilon"),
               "budget": policy.max_epsilon if policy else None,
               "lifetime_budget": policy.lifetime_epsilon if policy else None, "agent_log": bool(agent)}
        if facts:
            row["refused"] = {**m["refused"], **facts["refused"]}
            row["lifetime_epsilon"] = facts["lifetime_epsilon"] if facts["lifetime_epsilon"] is not None \
                else row["lifetime_epsilon"]
            pilot = facts["insecure_pilot"] or any("INSECURE" in s for s in facts["noise_sources"])
            row["noise"] = "pilot" if pilot else ("production" if facts["noise_sources"] else "not recorded")
            row["noise_sources"] = facts["noise_sources"]
            if pilot:
                flags.append(f"{identity}: DP noise from a seeded pilot PRNG (insecure_pilot), not a CSPRNG")
            row["unreceipted"] = len(accepted_tasks - facts["receipted_tasks"])
            if row["unreceipted"]:
                flags.append(f"{identity}: the server logged {row['unreceipted']} accepted submission(s) this "
                             "member's log holds no receipt for (a crash before it stored them, or a claim the "
                             "member does not bear out)")
        else:
            row["unreceipted"] = None
            row["noise"], row["noise_sources"] = "unknown (no agent log given)", []
        for what, spent, cap in (("ε", row["epsilon"], row["budget"]),
                                 ("lifetime ε", row["lifetime_epsilon"], row["lifetime_budget"])):
            if isinstance(spent, int | float) and isinstance(cap, int | float) and spent > cap:
                failures.append(f"{identity}: {what} {spent:.4g} exceeds the policy's budget {cap:.4g}")
        out.append(row)
    return out


def judge_decryptions(facts: dict[str, Any], mode: str | None, policy: PolicyTerms | None,
                       has_keyholder: bool, failures: list[str]) -> dict[str, Any]:
    """What the privacy mode allows, and a failure for each decryption beyond it (appended to ``failures``)."""
    allowed: list[str] = []
    if mode == "fused-only":
        allowed.append("the server: no per-member decryption at all; the key holder: fused sums")
        if facts["server_decrypt_agent"]:
            failures.append(f"fused-only: the server logged {facts['server_decrypt_agent']} per-member decryptions")
        kh = facts["keyholder"]
        public_ok = policy.public_rounds_per_agent if policy else None
        if public_ok:
            allowed.append("per-member openings of public calibrate/router rounds (privacy.public_rounds_per_agent)")
        if kh is not None:
            for kind, n in kh["decrypt_agent_by_round_kind"].items():
                if kind not in ("calibrate", "router") or public_ok is False:
                    failures.append(f"fused-only: the key holder opened {n} member vector(s) of {kind} rounds, "
                                    "which the policy does not allow")
        elif not has_keyholder:
            allowed.append("(no key-holder log given: its decryptions were not counted)")
    elif mode == "ckks":
        allowed.append("the server decrypts each member's vector (ckks mode)")
    elif mode == "tls-only":
        allowed.append("scores travel in the clear inside TLS: nothing to decrypt (pilot only)")
    failures.extend(facts["mismatches"])
    return {**facts, "mode": mode, "allowed": allowed}


def build_report(server: LogInput, agents: list[LogInput], *, keyholder: LogInput | None = None,
                 ca: LogInput | None = None, policy: PolicyTerms | None = None, now: float) -> dict[str, Any]:
    """Everything ``report.json`` holds (see the module docstring); raises only for unreadable inputs."""
    failures: list[str] = []
    flags: list[str] = []
    srv = _open(server, 0)
    agent_logs = [_open(a, i) for i, a in enumerate(agents, 1)]
    kh = _open(keyholder, 0) if keyholder else None
    ca_log = _open(ca, 0) if ca else None
    for log in [srv, *agent_logs, *([kh] if kh else []), *([ca_log] if ca_log else [])]:
        if not log.data["ok"]:
            failures.append(f"{log.party} log {log.data['directory']} fails verification: "
                            + "; ".join(log.data["problems"][:3]))
    sfacts = server_facts(srv.entries)
    members = member_facts(srv.entries)
    for agent in agent_logs:
        agent.data["facts"] = agent_facts(agent.entries)
    _corroborate(srv, agent_logs, members, failures)
    receipts = []
    for agent in agent_logs:
        receipts.extend(agent_receipts(str(agent.data["origin"]), agent.entries, srv.key, srv.state, srv.entries))
    failures.extend(f"receipt of {r.agent} for task {r.task_id} (server entry {r.audit_index}) does not reconcile: "
                    f"{r.reason}" for r in receipts if not r.ok)
    in_force = sfacts["policies"][-1] if sfacts["policies"] else {}
    if policy is not None and in_force.get("policy_digest") not in (None, policy.digest):
        failures.append(f"the policy file {policy.source} ({policy.digest}) is not the one in force "
                        f"({in_force.get('policy_digest')})")
    logged = [r for r in sfacts["insecure"] if policy is None or r not in policy.insecure]
    flags.extend(f"policy in force: {reason}" for reason in [*(policy.insecure if policy else []), *logged])
    member_rows = _judge_members(members, agent_logs, policy, failures, flags)
    mode = policy.mode if policy else in_force.get("privacy_mode")
    decryptions = judge_decryptions(decryption_facts(srv.entries, kh.entries if kh else None,
                                                      sfacts["round_kinds"]), mode, policy, kh is not None, failures)
    revocations = list(sfacts["revocations"])
    credentials = ca_facts(ca_log.entries) if ca_log else []
    revocations += [dict(c, source="CA log: certificate.revoked") for c in credentials
                    if c["action"] == "certificate.revoked"]
    logs = [srv, *agent_logs, *([kh] if kh else []), *([ca_log] if ca_log else [])]
    for log in logs:
        if log.data["key_source"] != "out of band" and not log.data["key_corroborated_by"]:
            flags.append(f"{log.party} log {log.data['directory']}: verified only with the key stored in the log "
                         "itself (give it out of band to prove who wrote it)")
        log.data.pop("facts", None)
    receipt_rows = [asdict(r) for r in receipts]
    return {
        "generated_at": now, "verdict": {"ok": not failures, "failures": failures}, "flags": flags,
        "logs": [log.data for log in logs],
        "policy": {"in_force": sfacts["policies"], "file": asdict(policy) if policy else None, "mode": mode},
        "datasets": sfacts["datasets"], "members": member_rows,
        "receipts": {"checked": len(receipts), "failed": sum(not r.ok for r in receipts), "items": receipt_rows},
        "decryptions": decryptions, "quarantines": sfacts["quarantines"], "revocations": revocations,
        "credentials": credentials if ca_log else None,
    }
