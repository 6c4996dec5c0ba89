"""Write an evaluation result: ``eval.md`` (tables), ``eval.json`` (every number) and PNG plots.

Works from the JSON-able dict (:meth:`sim.eval.experiment.EvalResult.to_dict`), so a report can be
re-rendered from a saved ``eval.json`` without re-running anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LABELS = {
    "reference": "reference (no alignment)",
    "uniform": "GRPO + uniform mixture (FedGRPO-style)",
    "fedavg": "GRPO + FedAvg reward model (parameters)",
    "mor": "GRPO + MoR learned router",
    "central": "GRPO + centralised non-private RM (ceiling)",
    "uniform-gn": "GRPO + uniform, group-normalised",
    "oracle": "GRPO + oracle domain router (reference row)",
    "mor-gn": "GRPO + MoR, group-normalised",
    "mor-cons": "GRPO + MoR, mean - λ·std (conservative)",
    "mor-shrunk": "GRPO + MoR, KL + shrunk toward uniform",
    "mor-online": "GRPO + MoR, shrunk + online on-policy refit",
    "mor-heldout": "GRPO + MoR fitted without the held-out domain",
    "mor-shrunk-heldout": "GRPO + MoR shrunk, fitted without the held-out domain",
}


def label(method: str) -> str:
    """Human name of a method: ``single:medical`` -> ``GRPO + medical RM only``."""
    if method.startswith("single:"):
        return f"GRPO + {method.split(':', 1)[1]} RM only"
    return LABELS.get(method, method)


def _cell(value: list[float]) -> str:
    return f"{value[0]:.3f} ± {value[1]:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: Mapping[str, Any], *, command: str = "mor eval") -> str:
    """The tables of ``eval.md``: policy metrics by method, then reward-model pair accuracy."""
    summary, clients = result["summary"], [c["name"] for c in result["config"]["clients"]]
    seeds = result["config"]["seeds"]
    out = [f"# MoR evaluation ({len(seeds)} seeds: {', '.join(map(str, seeds))}; mean ± std)", "",
           f"Command: `{command}` — wall time {result['wall_seconds'] / 60:.1f} min.", "",
           "## Aligned policy vs the reference, held-out test prompts", "",
           "Win rate of the method's greedy answer over the reference's under each client's hidden TRUE rule "
           "(tie = 1/2), on that client's own domain; easy-vqa accuracy on its test split.", ""]
    header = ["method", *(f"win: {c} (own domain)" for c in clients), "win: mean", "easy-vqa accuracy"]
    rows = [[label(m), *(_cell(summary["win_own"][m][c]) for c in clients), _cell(summary["win_own_mean"][m]),
             _cell(summary["accuracy"][m])] for m in result["methods"]]
    out += _table(header, rows)
    out += ["", "Same win rates on ALL held-out prompts (every domain), and exact accuracy on all prompts:", ""]
    header = ["method", *(f"win: {c} (all prompts)" for c in clients), "accuracy (all)"]
    rows = [[label(m), *(_cell(summary["win_all"][m][c]) for c in clients), _cell(summary["accuracy_all"][m])]
            for m in result["methods"]]
    out += _table(header, rows)
    out += ["", "## Reward models: pair accuracy on each client's held-out pairs", "",
            "Fraction of held-out pairs (labelled by that client's rule) where the reward ranks the chosen "
            "answer above the rejected one (tie = 1/2). Mixtures fuse z-calibrated client scores.", ""]
    header = ["reward", *clients]
    rows = [[label(s).removeprefix("GRPO + "), *(_cell(v[c]) for c in clients)]
            for s, v in summary["pair_accuracy"].items()]
    out += _table(header, rows)
    out += differences_markdown(result)
    by_domain = (result["seeds"][0].get("router_fit") or {}).get("mean_weights_by_domain") or {}
    if by_domain:
        out += ["", "## Learned router: mean weights per domain (public pairs, first seed)", ""]
        out += _table(["domain", *clients], [[d, *(f"{w[c]:.3f}" for c in clients)] for d, w in by_domain.items()])
        fits = [s["router_fit"] for s in result["seeds"] if s.get("router_fit")]
        out += ["", "Router validation accuracy per seed (learned / uniform): "
                + ", ".join(f"{f['val_accuracy']:.3f} / {f['val_accuracy_uniform']:.3f}" for f in fits) + "."]
    model = result["config"].get("model_path") or "the offline toy VLM (sim: server.vlm.build_small_vlm)"
    out += ["", f"Policy base model: {model}. DP: every client model and FedAvg client at "
            f"(ε={result['config']['epsilon']}, δ={result['config']['delta']:g}); member RNG: {result['dp_rng']}.", ""]
    return "\n".join(out)


def _ci(value: list[float] | None) -> str:
    if value is None:
        return "n/a"
    mark = " **" if value[1] > 0 or value[2] < 0 else ""
    return f"{mark.strip()}{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]{mark.strip()}"


def goal_markdown(goal: Mapping[str, Any]) -> list[str]:
    """One line per fused-reward row: which of the issue's four criteria its intervals meet."""
    if not goal:
        return []
    names = list(next(iter(goal.values()))["checks"])
    word = {True: "yes", False: "no", None: "not run"}
    out = ["", "## Against the goal (issue #17)", "",
           "A row meets the goal when the 95% interval of its difference to uniform, to FedAvg and to each "
           "single member lies above 0 and its point share of the oracle router's gain is at least 0.9.", ""]
    rows = [[label(m), *(word[g["checks"][n]] for n in names), "**yes**" if g["met"] else "no"]
            for m, g in goal.items()]
    return out + _table(["method", *names, "goal met"], rows)


def differences_markdown(result: Mapping[str, Any]) -> list[str]:
    """The CI tables: each row's difference to the baselines, share of the oracle's gain, held-out check."""
    diffs = result.get("differences")
    if not diffs or not diffs.get("rows"):
        return []
    best = diffs.get("best_single")
    out = ["", "## Differences in mean own-domain win rate, with 95% confidence intervals", "",
           f"Paired two-level bootstrap ({diffs['replicates']} replicates; seeds resampled as blocks, held-out "
           f"prompts resampled within each seed, paired across methods; {diffs['seeds']} seed(s)). Bold: the "
           f"interval excludes 0. Best single member (highest mean, chosen after the fact): {best}.", ""]
    header = ["method", "vs uniform", "vs FedAvg", f"vs best single ({best})", "gain vs reference",
              "share of oracle's gain"]
    rows = []
    for method, cols in diffs["rows"].items():
        share = diffs["oracle_share"].get(method)
        rows.append([label(method), *(_ci(cols.get(k)) for k in ("uniform", "fedavg", "best-single", "reference")),
                     "n/a" if share is None else f"{share[0]:.2f} [{share[1]:.2f}, {share[2]:.2f}]"])
    out += _table(header, rows)
    out += goal_markdown(diffs.get("goal") or {})
    held = diffs.get("heldout") or {}
    if held.get("rows"):
        out += ["", f"## Held-out domain check: `{held['domain']}` (owner {held['owner']}), not in the "
                "`*-heldout` routers' fit", "",
                f"Win rate under {held['owner']}'s rule on {held['domain']} prompts, and its difference to uniform.",
                ""]
        out += _table(["method", "win rate", "vs uniform"],
                      [[label(m), f"{v['win']:.3f}", _ci(v["vs_uniform"])] for m, v in held["rows"].items()])
    return out


def plot(result: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Bar charts with std error bars: win rates by method x client, RM pair accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary, clients = result["summary"], [c["name"] for c in result["config"]["clients"]]
    written = []
    for name, key, methods, ylabel in (
        ("win_rates.png", "win_own", list(result["methods"]), "win rate vs reference (own domain)"),
        ("rm_pair_accuracy.png", "pair_accuracy", list(summary["pair_accuracy"]), "held-out pair accuracy"),
    ):
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / len(clients)
        x = np.arange(len(methods))
        for i, client in enumerate(clients):
            values = [summary[key][m][client] for m in methods]
            ax.bar(x + i * width, [v[0] for v in values], width, yerr=[v[1] for v in values], capsize=3,
                   label=client)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(x + width * (len(clients) - 1) / 2, [label(m).removeprefix("GRPO + ") for m in methods],
                      rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(ylabel)
        ax.legend(title="client rule")
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    diffs = (result.get("differences") or {}).get("rows") or {}
    rows = [(m, v["uniform"]) for m, v in diffs.items() if "uniform" in v]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
        y = np.arange(len(rows))
        est = np.array([r[1][0] for r in rows])
        ax.errorbar(est, y, xerr=[est - np.array([r[1][1] for r in rows]), np.array([r[1][2] for r in rows]) - est],
                    fmt="o", capsize=3)
        ax.axvline(0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yticks(y, [label(m).removeprefix("GRPO + ") for m, _ in rows], fontsize=8)
        ax.set_xlabel("mean own-domain win rate minus uniform's (95% CI)")
        fig.tight_layout()
        fig.savefig(out_dir / "differences_vs_uniform.png", dpi=110)
        plt.close(fig)
        written.append(out_dir / "differences_vs_uniform.png")
    return written


def write_report(result: Mapping[str, Any], out_dir: Path, *, command: str = "mor eval") -> list[Path]:
    """Write eval.md, eval.json and the plots into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
    (out_dir / "eval.md").write_text(markdown(result, command=command), encoding="utf-8")
    return [out_dir / "eval.md", out_dir / "eval.json", *plot(result, out_dir)]
