"""The auditor's report as one self-contained HTML page: inline CSS, no scripts, no external assets.

Why self-contained: an auditor files the page with the findings; it must open the same way in
ten years on a machine with no network. Every value passes through ``html.escape`` — member
names, reasons and paths come from logs written by other parties. Failures and flags are red
(class ``bad``), passes green; the verdict comes first.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:80rem}
table{border-collapse:collapse;margin:.8rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}code{font-size:.85em}.bad{color:#b00;font-weight:bold}.ok{color:#070}
.banner{padding:.7rem 1rem;border:2px solid;margin:1rem 0}.banner.bad{background:#fde8e8}
.banner.ok{background:#e8f6e8;border-color:#070}.muted{color:#666}
"""
MAX_TIMELINE_ROWS = 40


def _when(t: Any) -> str:
    if not isinstance(t, int | float) or isinstance(t, bool):
        return "—"
    try:  # a member writes its own log: a time past year 9999 (or inf) must not crash the report
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return escape(f"{t!r} (not a date)")


def _e(value: Any) -> str:
    return "—" if value is None else escape(str(value))


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _table(headers: list[str], rows: list[list[str]], empty: str = "none") -> str:
    if not rows:
        return f"<p class='muted'>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(report: dict[str, Any]) -> str:
    verdict = report["verdict"]
    if verdict["ok"]:
        return ("<div class='banner ok' id='verdict'><b>PASS</b>: every log verifies, every receipt reconciles, "
                "and nothing the logs say exceeds the policy.</div>")
    items = "".join(f"<li>{escape(f)}</li>" for f in verdict["failures"])
    return f"<div class='banner bad' id='verdict'><b>FAIL</b> ({len(verdict['failures'])})<ul>{items}</ul></div>"


def _flags(report: dict[str, Any]) -> str:
    if not report["flags"]:
        return "<p class='ok' id='flags'>no protection switched off in anything these logs record</p>"
    items = "".join(f"<li>{escape(f)}</li>" for f in report["flags"])
    return f"<div class='banner bad' id='flags'><b>INSECURE, PILOT OR UNPROVEN</b><ul>{items}</ul></div>"


def _logs(report: dict[str, Any]) -> str:
    rows = []
    for log in report["logs"]:
        verdict = "<span class='ok'>verified</span>" if log["ok"] else \
            "<span class='bad'>FAILED</span><br>" + "<br>".join(escape(p) for p in log["problems"][:5])
        key = f"<code>{_e(log['key_sha256'][:16])}…</code> {_e(log['key_source'])}"
        if log["key_corroborated_by"]:
            key += "; matches " + escape(", ".join(log["key_corroborated_by"]))
        rows.append([_e(log["party"]), f"<code>{_e(log['origin'])}</code><br><span class='muted'>"
                     f"{_e(log['directory'])}</span>", str(log["entries"]), str(log["checkpoints"]),
                     f"{_when(log['first_time'])} – {_when(log['last_time'])}", key, verdict])
    return _table(["party", "log", "entries", "checkpoints", "span", "key", "verdict"], rows)


def _timeline(report: dict[str, Any]) -> str:
    out = []
    for log in report["logs"]:
        points = log["timeline"]
        rows = [[str(p["line"]), _num(p.get("size")), _when(p.get("time")), f"<code>{_e(p.get('root'))}</code>",
                 "<span class='ok'>ok</span>" if p["ok"] else "<span class='bad'>BAD</span>"]
                for p in points[:MAX_TIMELINE_ROWS]]
        more = f"<p class='muted'>… {len(points) - MAX_TIMELINE_ROWS} more in report.json</p>" \
            if len(points) > MAX_TIMELINE_ROWS else ""
        out.append(f"<h3>{_e(log['origin'] or log['directory'])}</h3>"
                   + _table(["line", "size", "signed at", "root (sha256)", ""], rows, "no signed checkpoint") + more)
    return "".join(out)


def _policy(report: dict[str, Any]) -> str:
    policy = report["policy"]
    rows = [[_when(p["time"]), f"<code>{_e(p['policy_digest'])}</code>", _e(p["privacy_mode"]),
             _e(p["holds_secret_key"])] for p in policy["in_force"]]
    held = policy["file"]
    note = (f"<p>Policy file given: <code>{_e(held['source'])}</code> <code>{_e(held['digest'])}</code></p>"
            if held else "<p class='muted'>no policy file given: budgets and allowed decryptions not judged</p>")
    data = [[_when(d["time"]), _e(d["role"]), _e(d["source"]), _e(d["count"]), f"<code>{_e(d['sha256'])}</code>"]
            for d in report["datasets"]]
    return (_table(["server started", "policy digest in force", "privacy mode", "holds CKKS secret key"], rows)
            + note + "<h3>Datasets</h3>" + _table(["loaded", "role", "source", "items", "sha256"], data))


def _members(report: dict[str, Any]) -> str:
    rows = []
    for m in report["members"]:
        refused = "<br>".join(f"{escape(k)}: {v}" for k, v in m["refused"].items()) or "0"
        noise = _e(m["noise"]) if m["noise"] != "pilot" else "<span class='bad'>PILOT (seeded PRNG)</span>"
        over = isinstance(m["epsilon"], int | float) and isinstance(m["budget"], int | float) \
            and m["epsilon"] > m["budget"]
        eps = f"{_num(m['epsilon'])} / {_num(m['budget'])}"
        enrolled = "<br>".join(_when(e["time"]) for e in m["enrolments"]) or "<span class='bad'>never</span>"
        accepted = str(m["accepted"]) + (f"<br><span class='bad'>{m['unreceipted']} without a receipt in its "
                                         "log</span>" if m.get("unreceipted") else "")
        rows.append([f"<code>{_e(m['identity'])}</code>", enrolled, f"{m['rounds_answered']} / {m['rounds_asked']}",
                     accepted, refused, f"<span class='bad'>{eps}</span>" if over else eps,
                     f"{_num(m['lifetime_epsilon'])} / {_num(m['lifetime_budget'])}", noise,
                     "yes" if m["agent_log"] else "<span class='muted'>no</span>"])
    return _table(["member", "enrolled", "rounds answered / asked", "accepted", "refused, by reason",
                   "ε / budget", "lifetime ε / cap", "DP noise", "own log"], rows)


def _receipts(report: dict[str, Any]) -> str:
    r = report["receipts"]
    bad = [x for x in r["items"] if not x["ok"]]
    head = (f"<p class='{'bad' if bad or not r['checked'] else 'ok'}'>{r['checked']} receipts checked, "
            f"{r['failed']} failed</p>")
    return head + _table(["member", "task", "server entry", "why"], [
        [f"<code>{_e(x['agent'])}</code>", _e(x["task_id"]), str(x["audit_index"]), f"<span class='bad'>"
         f"{_e(x['reason'])}</span>"] for x in bad], "every receipt is in the server's log")


def _decryptions(report: dict[str, Any]) -> str:
    d = report["decryptions"]
    rows = [["server: per-member vectors (decrypt.agent)", str(d["server_decrypt_agent"])],
            ["server: fused sums via the key holder (decrypt.fused)", str(d["server_decrypt_fused"])]]
    if d["keyholder"] is not None:
        kh = d["keyholder"]
        rows += [["key holder: fused sums opened", str(kh["decrypt_fused"])],
                 ["key holder: member vectors opened, by round kind",
                  escape(", ".join(f"{k}: {v}" for k, v in kh["decrypt_agent_by_round_kind"].items()) or "0")]]
    allowed = "".join(f"<li>{escape(a)}</li>" for a in d["allowed"])
    mism = "".join(f"<li class='bad'>{escape(m)}</li>" for m in d["mismatches"])
    return (f"<p>privacy mode: <b>{_e(d['mode'])}</b>; the policy allows:</p><ul>{allowed}</ul>"
            + _table(["", "count"], rows) + (f"<ul>{mism}</ul>" if mism else ""))


def _events(report: dict[str, Any]) -> str:
    q = [[_when(x["time"]), _e(x["action"]), f"<code>{_e(x['agent'])}</code>", _e(x["reason"])]
         for x in report["quarantines"]]
    r = [[_when(x["time"]), f"<code>{_e(x['identity'])}</code>", _e(x.get("serial")), _e(x["source"])]
         for x in report["revocations"]]
    out = ("<h3>Quarantines</h3>" + _table(["time", "event", "member", "reason"], q)
           + "<h3>Revocations</h3>" + _table(["time", "identity", "serial", "seen in"], r))
    if report.get("credentials") is None:
        return out + "<p class='muted'>no CA log given: certificates issued and CSRs refused are not listed</p>"
    c = [[_when(x["time"]), _e(x["action"]), "<span class='bad'>refused</span>" if x["outcome"] != "ok" else "ok",
          f"<code>{_e(x['identity'])}</code>", _e(x["serial"]), _e(x["reason"]), _e(x["operator"])]
         for x in report["credentials"]]
    return out + "<h3>Certificates (the CA's log)</h3>" + _table(
        ["time", "event", "outcome", "identity", "serial", "reason", "operator"], c)


def render_report(report: dict[str, Any]) -> str:
    """The HTML page for a :func:`audit.report.build_report` result."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MoR-Secure audit report</title>"
        f"<style>{_STYLE}</style></head><body><h1>MoR-Secure audit report</h1>"
        f"<p id='generated'>Generated {_when(report['generated_at'])} by <code>mor audit report</code>; the "
        "same facts are in report.json.</p>"
        + _verdict(report) + _flags(report)
        + "<h2>Logs and their verification</h2>" + _logs(report)
        + "<h2>Receipts (agent ↔ server)</h2>" + _receipts(report)
        + "<h2>Policy and datasets in force</h2>" + _policy(report)
        + "<h2>Members</h2>" + _members(report)
        + "<h2>Decryptions</h2>" + _decryptions(report)
        + "<h2>Quarantines, revocations, certificates</h2>" + _events(report)
        + "<h2>Checkpoint timeline</h2>" + _timeline(report)
        + "</body></html>"
    )
