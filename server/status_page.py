"""A self-contained HTML status page (no scripts, no external assets; every value escaped).

Operators and auditors open it in a browser holding their consortium certificate; it shows
the same snapshot as ``/v1/status``. Everything interpolated passes through ``html.escape``:
agent architectures and names come from the outside world.

:class:`StatusSnapshot` is that snapshot: the v1 wire ``ServerStatus`` plus what an operator
needs beyond it — calibrate/router rounds (``rounds_collected``) and the router in use, with
its mean weight per agent per prompt domain as the trainer last recorded it.
"""

from __future__ import annotations

import datetime as dt
from html import escape

from pydantic import BaseModel, ConfigDict

from wire.messages import ServerStatus


class RouterWeightsView(BaseModel):
    """The router in use: what it is and how it weights the agents, per prompt domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    digest: str
    basis: str
    updated_at: float
    by_domain: dict[str, dict[str, float]]


class DatasetView(BaseModel):
    """A server-held set the policy is aligned on (``data.loaded`` in the audit log says the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    source: str
    count: int
    sha256: str
    domains: dict[str, int]
    loaded_at: float


class MemberHealthView(BaseModel):
    """A member whose own vectors were refused in recent rounds, and its quarantine if any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    consecutive_failures: int
    quarantined_until: float | None
    reason: str | None


class StatusSnapshot(ServerStatus):
    """``ServerStatus`` (``router_weights``: mean over all prompts) plus the fields above."""

    rounds_collected: int
    router: RouterWeightsView | None
    datasets: list[DatasetView] = []
    member_health: list[MemberHealthView] = []
    crl_next_update: float | None = None  # the consortium CRL in use expires then: every connection fails after it
    crl_warning: str | None = None  # set within 7 days of that time, and after it


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}
.on{color:#070}.off{color:#a00}code{font-size:.9em}
"""


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _health_section(status: StatusSnapshot) -> str:
    if not status.member_health:
        return "<p>every member's recent vectors were usable</p>"
    rows = [[f"<code>{escape(m.agent)}</code>", str(m.consecutive_failures),
             (f"<span class='off'>until {escape(_when(m.quarantined_until))}</span>"
              if m.quarantined_until is not None else "no"), escape(m.reason or "")] for m in status.member_health]
    return _table(["member", "failed rounds in a row", "quarantined", "last reason"], rows)


def _data_section(status: StatusSnapshot) -> str:
    if not status.datasets:
        return "<p>no training run has loaded its data yet</p>"
    rows = [[escape(d.role), escape(d.source), str(d.count), f"<code>{escape(d.sha256)}</code>",
             escape(", ".join(f"{name}: {n}" for name, n in sorted(d.domains.items()))), escape(_when(d.loaded_at))]
            for d in status.datasets]
    return _table(["role", "source", "items", "sha256", "domains", "loaded"], rows)


def _router_section(status: StatusSnapshot) -> str:
    router = status.router
    if router is None:
        return "<p>not trained yet</p>"
    domains = sorted(router.by_domain)
    rows = [[f"<code>{escape(agent)}</code>", f"{overall:.4f}",
             *(f"{router.by_domain[d].get(agent, 0.0):.4f}" for d in domains)]
            for agent, overall in sorted(status.router_weights.items())]
    about = (f"<p>{escape(router.kind)} router <code>{escape(router.digest)}</code>, {escape(router.basis)}; "
             f"updated {escape(_when(router.updated_at))}</p>")
    return about + _table(["agent", "all prompts", *domains], rows)


def render_status_page(status: StatusSnapshot) -> str:
    """The HTML page for one status snapshot."""
    agents = [[
        f"<code>{escape(a.agent)}</code>", escape(a.architecture),
        f"{a.epsilon:.3g} / {a.epsilon_budget:.3g}",
        (f"{a.lifetime_epsilon:.3g}" if a.lifetime_epsilon is not None else "—")
        + (f" / {a.lifetime_budget:.3g}" if a.lifetime_budget is not None else " (no cap)"),
        f"{a.delta:.2g}",
        f"<span class='{'on' if a.online else 'off'}'>{'online' if a.online else 'offline'}</span>",
        escape(_when(a.last_seen)), str(a.submissions),
    ] for a in status.agents]
    summary = [
        ["consortium", escape(status.consortium)], ["privacy mode", escape(status.privacy_mode)],
        ["policy digest", f"<code>{escape(status.policy_digest)}</code>"],
        ["rounds fused / collected / skipped",
         f"{status.rounds_completed} / {status.rounds_collected} / {status.rounds_skipped}"],
        ["current round", escape(status.current_round or "none")],
        ["audit log size", str(status.audit_size)],
        ["audit root (sha256)", f"<code>{escape(status.audit_root_sha256)}</code>"],
        ["CRL next update", escape(_when(status.crl_next_update)) + (
            f" <span class='off'>{escape(status.crl_warning)}</span>" if status.crl_warning else "")],
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>MoR-Secure status: {escape(status.consortium)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>MoR-Secure aggregation server</h1>{_table(['', ''], summary)}"
        f"<h2>Agents ({len(status.agents)})</h2>"
        + _table(["agent", "architecture", "ε / budget", "lifetime ε / cap", "δ", "state", "last seen", "submissions"],
                 agents)
        + "<h2>Router weights</h2>" + _router_section(status)
        + "<h2>Member health</h2>" + _health_section(status)
        + "<h2>Data the policy is aligned on</h2>" + _data_section(status)
        + "</body></html>"
    )
