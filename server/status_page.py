"""A self-contained HTML status page (no scripts, no external assets; every value escaped).

Operators and auditors open it in a browser holding their consortium certificate (a PKCS#12
from ``mor ca export-p12``); it shows the same snapshot as ``/v1/status``. Everything
interpolated passes through ``html.escape``: agent architectures and names come from the
outside world.

What a person needs first is on top: every protection the policy switches off (pilot,
tls-only) in red, the time the snapshot was taken ("as of": a page left open in a tab goes
stale), when their own certificate and the consortium CRL expire, and how far GRPO training
is (step, reward, KL). Training progress is read back from the audit log's newest
``grpo.step`` entries (:mod:`server.status_progress`), so it needs no state of its own and
survives a restart.

:class:`StatusSnapshot` is that snapshot: the v1 wire ``ServerStatus`` plus what an operator
needs beyond it — calibrate/router rounds (``rounds_collected``) and the router in use, with
its mean weight per agent per prompt domain as the trainer last recorded it.
"""

from __future__ import annotations

import datetime as dt
from html import escape

from pydantic import BaseModel, ConfigDict

from server.status_progress import CertificateView, TrainingProgressView
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
    as_of: float | None = None  # the server's clock when this snapshot was taken
    insecure: list[str] = []  # every protection the policy switches off (Policy.insecure_reasons)
    training: TrainingProgressView | None = None
    your_certificate: CertificateView | None = None
    server_certificate: CertificateView | None = None


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}
.on{color:#070}.off{color:#a00}code{font-size:.9em}
.insecure{background:#fde8e8;border:2px solid #c00;color:#a00;padding:.6rem 1rem;font-weight:bold}
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


def _training_section(status: StatusSnapshot) -> str:
    t = status.training
    if t is None:
        return "<p>no training run has started</p>"
    if t.step is None:
        return f"<p id='training'>{escape(t.state)}: no GRPO step yet</p>"
    total = f" of {t.max_steps}" if t.max_steps is not None else ""
    rows = [["state", escape(t.state)], ["GRPO step", f"{t.step}{total}"],
            ["mean reward", _fmt(t.reward) + (f" (std {_fmt(t.reward_std)})" if t.reward_std is not None else "")],
            ["KL to the reference", _fmt(t.kl)], ["members answered", _fmt(t.agents_answered)],
            ["recorded", escape(_when(t.at))]]
    return _table(["", ""], rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _cert_cell(cert: CertificateView | None) -> str:
    if cert is None:
        return "unknown"
    warn = f" <span class='off'>{escape(cert.warning)}</span>" if cert.warning else ""
    return f"{escape(_when(cert.not_after))} (<code>{escape(cert.identity)}</code>){warn}"


def _banner(status: StatusSnapshot) -> str:
    flags = "".join(f"<li>{escape(reason)}</li>" for reason in status.insecure)
    insecure = (f"<div class='insecure' id='insecure'>INSECURE: this consortium's policy switches protections off"
                f"<ul>{flags}</ul></div>") if status.insecure else ""
    mine = status.your_certificate
    cert = ""
    if mine is not None:
        warn = f" <span class='off'>{escape(mine.warning)}</span>" if mine.warning else ""
        cert = (f"<p id='your-certificate'>You are <code>{escape(mine.identity)}</code>; your certificate expires "
                f"{escape(_when(mine.not_after))}{warn}</p>")
    return (f"{insecure}<p id='as-of'>As of {escape(_when(status.as_of))} (server time; reload for a fresh "
            f"snapshot)</p>{cert}")


def _noise_cell(source: str | None) -> str:
    """A member whose DP noise is not from a CSPRNG (a declared pilot's seeded PRNG) is shown in red."""
    if source is None:
        return "—"
    if source.startswith("os-csprng"):
        return escape(source)
    return f"<span class='off' id='pilot-noise'>{escape(source)}</span>"


def render_status_page(status: StatusSnapshot) -> str:
    """The HTML page for one status snapshot."""
    agents = [[
        f"<code>{escape(a.agent)}</code>", escape(a.architecture),
        f"{a.epsilon:.3g} / {a.epsilon_budget:.3g}",
        (f"{a.lifetime_epsilon:.3g}" if a.lifetime_epsilon is not None else "—")
        + (f" / {a.lifetime_budget:.3g}" if a.lifetime_budget is not None else " (no cap)"),
        f"{a.delta:.2g}",
        f"<span class='{'on' if a.online else 'off'}'>{'online' if a.online else 'offline'}</span>",
        escape(_when(a.last_seen)), str(a.submissions), _noise_cell(a.noise_source),
    ] for a in status.agents]
    summary = [
        ["consortium", escape(status.consortium)], ["privacy mode", escape(status.privacy_mode)],
        ["policy digest", f"<code>{escape(status.policy_digest)}</code>"],
        ["rounds fused / collected / skipped",
         f"{status.rounds_completed} / {status.rounds_collected} / {status.rounds_skipped}"],
        ["current round", escape(status.current_round or "none")],
        ["audit log size", str(status.audit_size)],
        ["audit root (sha256)", f"<code>{escape(status.audit_root_sha256)}</code>"],
        ["server certificate expires", _cert_cell(status.server_certificate)],
        ["CRL next update", escape(_when(status.crl_next_update)) + (
            f" <span class='off'>{escape(status.crl_warning)}</span>" if status.crl_warning else "")],
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>MoR-Secure status: {escape(status.consortium)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>MoR-Secure aggregation server</h1>{_banner(status)}{_table(['', ''], summary)}"
        + "<h2>Training (GRPO)</h2>" + _training_section(status)
        + f"<h2>Agents ({len(status.agents)})</h2>"
        + _table(["agent", "architecture", "ε / budget", "lifetime ε / cap", "δ", "state", "last seen", "submissions",
                  "DP noise source"], agents)
        + "<h2>Router weights</h2>" + _router_section(status)
        + "<h2>Member health</h2>" + _health_section(status)
        + "<h2>Data the policy is aligned on</h2>" + _data_section(status)
        + "</body></html>"
    )
