"""The run's report: ``results.json`` (machine-readable) and ``report.html`` (one self-contained file).

Why self-contained: the report is what gets mailed to a consortium's board or attached to an
audit; it must open anywhere with no folder beside it. Plots are matplotlib PNGs embedded as
base64 ``data:`` URIs, and every string from the run is HTML-escaped.

Plots: fused reward and KL per GRPO step; router weights per domain; ε spent per client
against its budget and the policy maximum; gold accuracy and each client's preference win
rate before/after alignment.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot loads
from matplotlib.axes import Axes  # noqa: E402

Plot = Callable[[Axes, dict[str, Any]], None]


def _png(draw: Plot, results: dict[str, Any], size: tuple[float, float] = (6.0, 3.4)) -> str:
    figure, axes = plt.subplots(figsize=size, dpi=100)
    try:
        draw(axes, results)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else float("nan")


def plot_reward_kl(ax: Axes, results: dict[str, Any]) -> None:
    steps = results.get("training", {}).get("steps", [])
    xs = [s.get("step") for s in steps]
    ax.plot(xs, [_finite(s.get("reward")) for s in steps], "o-", color="tab:blue", label="fused reward")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("fused reward (calibrated)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(xs, [_finite(s.get("kl")) for s in steps], "s--", color="tab:red", label="KL to reference")
    twin.set_ylabel("KL", color="tab:red")
    ax.set_title("Fused reward and KL per step")


def plot_router(ax: Axes, results: dict[str, Any]) -> None:
    router = results.get("training", {}).get("router", {})
    by_domain: dict[str, dict[str, float]] = router.get("mean_weights_by_domain") or {}
    domains = sorted(by_domain)
    agents = sorted({a for weights in by_domain.values() for a in weights})
    width = 0.8 / max(1, len(agents))
    for i, agent in enumerate(agents):
        ax.bar([d + i * width for d in range(len(domains))], [by_domain[d].get(agent, 0.0) for d in domains],
               width, label=agent.rsplit("/", 1)[-1])
    ax.set_xticks([d + width * (len(agents) - 1) / 2 for d in range(len(domains))], domains)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean router weight")
    ax.set_title("Router weights per domain" + ("" if router.get("fitted") else " (not fitted: uniform)"))
    if agents:
        ax.legend(fontsize=8)


def plot_epsilon(ax: Axes, results: dict[str, Any]) -> None:
    agents = results.get("agents", [])
    names = [a["name"] for a in agents]
    ax.bar(names, [_finite(a.get("epsilon_spent")) for a in agents], color="tab:green", label="ε spent")
    ax.scatter(names, [_finite(a.get("epsilon_budget")) for a in agents], marker="_", s=900, color="black",
               label="local budget", zorder=3)
    policy_max = results.get("policy", {}).get("max_epsilon")
    if policy_max is not None:
        ax.axhline(policy_max, color="tab:red", linestyle=":", label="policy maximum")
    ax.set_ylabel("ε (δ per report)")
    ax.set_title("Differential privacy: ε spent per client")
    ax.legend(fontsize=8)


def plot_before_after(ax: Axes, results: dict[str, Any]) -> None:
    evaluation = results.get("evaluation") or {}
    labels, before, after = ["gold accuracy"], [_finite(evaluation.get("gold_accuracy_before"))], \
        [_finite(evaluation.get("gold_accuracy_after"))]
    for name, pref in (evaluation.get("clients") or {}).items():
        labels.append(f"{name} win rate")
        before.append(0.5)  # the reference against itself
        after.append(_finite(pref.get("win_rate")))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], before, 0.4, label="reference (warm start)", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], after, 0.4, label="aligned (GRPO)", color="tab:purple")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Before / after alignment (held-out test prompts)")
    ax.legend(fontsize=8)


PLOTS: dict[str, Plot] = {"Fused reward and KL": plot_reward_kl, "Router weights per domain": plot_router,
                          "ε per client": plot_epsilon, "Before / after": plot_before_after}


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _status(ok: bool) -> str:
    return '<span class="ok">PASSED</span>' if ok else '<span class="bad">FAILED</span>'


def render_html(results: dict[str, Any]) -> str:
    """The whole report as one HTML string (plots inlined)."""
    audit = results.get("audit", {})
    policy = results.get("policy", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>MoR-Secure demo report</title><style>",
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
        ".ok{color:#070;font-weight:bold}.bad{color:#b00;font-weight:bold}"
        ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em}img{max-width:100%}",
        "</style></head><body><h1>MoR-Secure demo report</h1>",
        f"<p>Consortium <b>{html.escape(str(policy.get('consortium')))}</b>, policy "
        f"<code>{html.escape(str(policy.get('source')))}</code> (privacy mode "
        f"<b>{html.escape(str(policy.get('privacy_mode')))}</b>, digest <code>{html.escape(str(policy.get('digest')))}"
        f"</code>). Run: {html.escape(str(results.get('mode')))}, "
        f"{_fmt(results.get('timings_s', {}).get('total'))} s.</p>",
    ]
    for warning in results.get("insecure", []):
        parts.append(f"<p class='warn'>INSECURE: {html.escape(warning)}</p>")
    parts.append(f"<h2>Audit</h2><p>Verification of every log: {_status(bool(audit.get('verification_passed')))}; "
                 f"reconciliation of {audit.get('receipts_checked', 0)} agent receipts against the server's final "
                 f"signed checkpoint (size {audit.get('server_checkpoint_size')}): "
                 f"{_status(bool(audit.get('reconciliation_passed')))}.</p>")
    parts.append(_table([[log["party"], log["entries"], log["checkpoints"], log["ok"], "; ".join(log["problems"])]
                         for log in audit.get("logs", [])], ["log", "entries", "checkpoints", "ok", "problems"]))
    training = results.get("training", {})
    parts.append(f"<h2>Training</h2><p>{len(training.get('steps', []))} GRPO steps; LoRA delta norm "
                 f"{_fmt(training.get('lora_delta_norm'))}; router digest "
                 f"<code>{html.escape(str(training.get('router', {}).get('digest')))}</code>.</p>")
    for note in training.get("notes", []):
        parts.append(f"<p>Note: {html.escape(str(note))}</p>")
    parts.append(_table([[a["name"], a["style"], a["arch"], a.get("epsilon_spent"), a.get("epsilon_budget"),
                          a.get("lifetime_epsilon"), a.get("delta"), a.get("within_budget"), a.get("noise_source")]
                         for a in results.get("agents", [])],
                        ["agent", "preference style", "reward model", "ε spent", "ε budget", "lifetime ε", "δ",
                         "within budget", "DP noise source"]))
    for title, draw in PLOTS.items():
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{_png(draw, results)}'>")
    parts.extend(_effect_section(results))
    examples = (results.get("evaluation") or {}).get("examples", [])
    if examples:
        parts.append("<h2>Example answers</h2>" + _table(
            [[e["domain"], e["question"], e.get("gold", ""), e["before"], e["after"]] for e in examples],
            ["domain", "question", "gold", "reference", "aligned"]))
    parts.append("<h2>Timings (s)</h2>" + _table([[k, v] for k, v in results.get("timings_s", {}).items()],
                                                 ["phase", "seconds"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _effect_section(results: dict[str, Any]) -> list[str]:
    """The measured effect of alignment, in numbers and in words (also when there is none)."""
    evaluation = results.get("evaluation") or {}
    clients = evaluation.get("clients") or {}
    if not clients:
        return []
    model = results.get("model") or {}
    rows = []
    for name, pref in clients.items():
        ci = pref.get("own_domain_ci") or (None, None)
        rows.append([name, pref.get("own_domain_prompts"), pref.get("win_rate_own_domain"), ci[0], ci[1],
                     pref.get("utility_before"), pref.get("utility_after"), pref.get("verdict", "")])
    words = [f"{name}: {pref.get('verdict', '')}" for name, pref in clients.items()]
    return [f"<h2>Effect of alignment</h2><p>Policy: {html.escape(str(model.get('name', model.get('path'))))}. "
            f"Aligned vs reference on {evaluation.get('n_prompts')} held-out test prompts, greedy answers, judged "
            f"by each member's hidden rule (win = higher utility, tie = 1/2). Gold accuracy "
            f"{_fmt(evaluation.get('gold_accuracy_before'))} &rarr; {_fmt(evaluation.get('gold_accuracy_after'))}; "
            f"{evaluation.get('changed_answers')} answers changed.</p>",
            _table(rows, ["member", "own-domain prompts", "own-domain win rate", "95% CI low", "95% CI high",
                          "utility before", "utility after", "verdict"]),
            "<p>In words: " + html.escape("; ".join(words)) + ".</p>"]


def write_report(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` into ``out``; returns both paths."""
    results_path, report_path = out / "results.json", out / "report.html"
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str), "utf-8")
    report_path.write_text(render_html(results), "utf-8")
    return results_path, report_path
