"""What the verified entries of each log say, gathered per member: the facts the auditor's report shows.

Only entries in a log's *verified prefix* reach these functions (the caller scanned the log
first), so nothing here re-checks signatures; everything here is counting and cross-reading:
the server's log says who enrolled, was asked, answered, was refused and why, which data and
policy were in force, what was decrypted; each agent's own log says how its DP noise was drawn
and what it spent; the key holder's log says what it opened, and whether the server's log cites
those openings truthfully.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Entry = dict[str, Any]

CA_ACTIONS = ("ca.created", "certificate.issued", "csr.refused", "certificate.revoked", "crl.signed")


def is_member(identity: str) -> bool:
    """A ``mor://<consortium>/client/<name>`` identity."""
    parts = identity.split("/")
    return identity.startswith("mor://") and len(parts) == 5 and parts[3] == "client"


def _details(entry: Entry) -> dict[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def server_facts(entries: list[Entry]) -> dict[str, Any]:
    """Policy digests, datasets, insecure flags, quarantines, revocations and round kinds from the server log."""
    policies: list[dict[str, Any]] = []
    datasets: list[dict[str, Any]] = []
    insecure: list[str] = []
    quarantines: list[dict[str, Any]] = []
    revocations: list[dict[str, Any]] = []
    round_kinds: dict[str, str] = {}
    for e in entries:
        action, d = e["action"], _details(e)
        if action == "server.started":
            policies.append({"time": e["time"], "policy_digest": d.get("policy_digest"),
                             "privacy_mode": d.get("privacy_mode"), "holds_secret_key": d.get("holds_secret_key")})
        elif action == "data.loaded":
            datasets.append({"time": e["time"], "role": d.get("role"), "sha256": d.get("sha256"),
                             "count": d.get("count"), "source": d.get("source")})
        elif action == "policy.insecure":
            insecure.extend(str(r) for r in d.get("reasons") or [] if str(r) not in insecure)
        elif action in ("agent.quarantined", "agent.quarantine_ended"):
            quarantines.append({"time": e["time"], "action": action, "agent": d.get("agent"),
                                "reason": d.get("reason"), "until": d.get("until")})
        elif action == "reject.certificate_revoked":
            revocations.append({"time": e["time"], "identity": e["actor"],
                                "source": "server: request refused (certificate_revoked)"})
        elif action == "round.opened" and isinstance(d.get("round_id"), str):
            round_kinds[d["round_id"]] = str(d.get("kind"))
    return {"policies": policies, "datasets": datasets, "insecure": insecure, "quarantines": quarantines,
            "revocations": revocations, "round_kinds": round_kinds}


def member_facts(entries: list[Entry]) -> dict[str, dict[str, Any]]:
    """Per member, from the server log: enrolment, rounds asked and answered, accepted and refused by reason."""
    members: dict[str, dict[str, Any]] = {}

    def member(identity: str) -> dict[str, Any]:
        return members.setdefault(identity, {
            "identity": identity, "enrolments": [], "rounds_asked": set(), "rounds_answered": set(), "accepted": 0,
            "accepted_tasks": set(), "refused": Counter()})

    for e in entries:
        action, d, actor = e["action"], _details(e), e["actor"]
        if is_member(actor):
            m = member(actor)
            if action == "agent.enrolled":
                m["enrolments"].append({"time": e["time"], "epsilon": d.get("epsilon"), "delta": d.get("delta"),
                                        "lifetime_epsilon": d.get("lifetime_epsilon"),
                                        "architecture": d.get("architecture"),
                                        "signing_key_sha256": d.get("signing_key_sha256")})
            elif action == "submission.accepted":
                m["accepted"] += 1
                m["accepted_tasks"].add(d.get("task_id"))
                if e.get("round_id"):
                    m["rounds_answered"].add(e["round_id"])
            elif action.startswith("reject."):
                m["refused"]["server: " + action.removeprefix("reject.")] += 1
        elif action == "round.opened":
            for identity in d.get("tasks") or {}:
                if isinstance(identity, str) and is_member(identity):
                    member(identity)["rounds_asked"].add(d.get("round_id"))
        elif action == "decrypt.refused" and isinstance(d.get("agent"), str) and is_member(d["agent"]):
            member(d["agent"])["refused"]["fusion: " + str(d.get("reason") or "vector dropped")[:80]] += 1
    for m in members.values():
        asked = m["rounds_asked"] | m["rounds_answered"]  # a task answered was a task asked, opened by the log or not
        m["rounds_asked"], m["rounds_answered"] = len(asked), len(m["rounds_answered"])
        m["refused"] = dict(sorted(m["refused"].items()))
    return members


def agent_facts(entries: list[Entry]) -> dict[str, Any]:
    """From one agent's own log: DP noise source, ε spent (per training and lifetime), its own refusals."""
    facts: dict[str, Any] = {"noise_sources": [], "insecure_pilot": False, "epsilon": None, "lifetime_epsilon": None,
                             "lifetime_limit": None, "server_key_sha256": set(), "refused": Counter(),
                             "receipted_tasks": set()}
    for e in entries:
        action, d = e["action"], _details(e)
        if action == "model.trained":
            source = d.get("noise_source")
            if source and str(source) not in facts["noise_sources"]:
                facts["noise_sources"].append(str(source))
            facts["insecure_pilot"] |= d.get("insecure_pilot") is True
            facts["epsilon"] = d.get("epsilon", facts["epsilon"])
        elif action == "agent.started":
            facts["insecure_pilot"] |= d.get("insecure_pilot") is True
        elif action == "privacy.spent":
            facts["lifetime_epsilon"] = d.get("lifetime_epsilon")
            facts["lifetime_limit"] = d.get("lifetime_limit")
        elif action == "agent.enrolled":
            digest = (e.get("digests") or {}).get("server_key_sha256")
            if isinstance(digest, str) and digest:
                facts["server_key_sha256"].add(digest)
        elif action == "receipt.stored":
            receipt = d.get("receipt")  # the member writes this log: anything may stand here
            task_id = receipt.get("task_id") if isinstance(receipt, dict) else None
            if isinstance(task_id, str):
                facts["receipted_tasks"].add(task_id)
        elif action in ("task.refused", "submission.refused"):
            facts["refused"][f"agent: {action.split('.')[0]} {d.get('code') or d.get('status') or ''}".strip()] += 1
    facts["refused"] = dict(facts["refused"])
    return facts


def decryption_facts(server: list[Entry], keyholder: list[Entry] | None,
                     round_kinds: dict[str, str]) -> dict[str, Any]:
    """Decryptions each side logged, and whether the server's citations match the key holder's log."""
    counts = Counter(e["action"] for e in server if e["action"].startswith("decrypt."))
    facts: dict[str, Any] = {"server_decrypt_agent": counts["decrypt.agent"],
                             "server_decrypt_fused": counts["decrypt.fused"], "keyholder": None, "mismatches": []}
    if keyholder is None:
        return facts
    opened = [e for e in keyholder if e["action"] == "decrypt.agent"]
    fused = [e for e in keyholder if e["action"] == "decrypt.fused"]
    facts["keyholder"] = {
        "decrypt_fused": len(fused), "decrypt_agent": len(opened),
        "decrypt_agent_by_round_kind": dict(Counter(round_kinds.get(str(e.get("round_id")), "unknown")
                                                    for e in opened))}
    by_index = {e["index"]: e for e in keyholder}
    for e in server:
        d = _details(e)
        if e["action"] in ("decrypt.fused", "keyholder.agent_decryption") and "keyholder_audit_index" in d:
            cited = by_index.get(d["keyholder_audit_index"])
            want = "decrypt.fused" if e["action"] == "decrypt.fused" else "decrypt.agent"
            if cited is None or cited["action"] != want or cited.get("round_id") != e.get("round_id"):
                found = f"{cited['action']} of round {cited.get('round_id')}" if cited else "missing"
                facts["mismatches"].append(f"server entry {e['index']} ({e['action']}, round {e.get('round_id')}) "
                                           f"cites key-holder entry {d['keyholder_audit_index']}, which is {found}")
    if len(fused) != counts["decrypt.fused"]:
        facts["mismatches"].append(f"the key holder logged {len(fused)} fused decryptions, the server "
                                   f"{counts['decrypt.fused']}")
    return facts


def ca_facts(entries: list[Entry]) -> list[dict[str, Any]]:
    """The CA log's credential events: certificates issued (CA key or CSR), CSRs refused, revocations, CRLs."""
    out = []
    for e in entries:
        if e["action"] in CA_ACTIONS:
            d = _details(e)
            out.append({"time": e["time"], "action": e["action"], "outcome": e["outcome"],
                        "identity": d.get("identity"), "serial": d.get("serial"), "reason": d.get("reason"),
                        "operator": d.get("operator")})
    return out
