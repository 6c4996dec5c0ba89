"""The issue #17 comparisons, with confidence intervals (:mod:`sim.eval.stats`), as JSON-able numbers.

For every GRPO row, the paired bootstrap difference of the mean own-domain win rate to:
``uniform``, ``fedavg``, the best single member (the single row with the highest mean — chosen
after seeing the data, which favours the baseline, i.e. is conservative for the other rows), and
the reference (the gain); plus the share of the oracle router's gain each row reaches. The
held-out check compares rows on the domain left out of the ``*-heldout`` routers' fit, under
its owner's rule, against ``uniform``.
"""

from __future__ import annotations

from typing import Any

from corpus.styles import STYLES
from sim.eval.stats import Outcomes, gain_share, paired_difference, point_mean

BASELINES = ("uniform", "fedavg", "best-single", "reference")
HELDOUT_ROWS = ("oracle", "mor", "mor-shrunk", "mor-heldout", "mor-shrunk-heldout")


def _outcomes(result: Any, method: str, only: str | None = None) -> Outcomes:
    return [{k: v for k, v in seed.outcomes[method].items() if only is None or k == only} for seed in result.seeds]


def best_single(result: Any) -> str | None:
    singles = [m for m in result.methods if m.startswith("single:")]
    return max(singles, key=lambda m: point_mean(_outcomes(result, m))) if singles else None


def differences(result: Any) -> dict[str, Any]:
    """``{"best_single", "rows": method -> baseline -> [est, low, high], "oracle_share", "heldout"}``."""
    config = result.config
    reps = config.bootstrap
    present = set(result.methods)
    best = best_single(result)
    named = {"uniform": "uniform", "fedavg": "fedavg", "best-single": best, "reference": "reference"}
    baselines = {k: v for k, v in named.items() if v is not None and v in present}
    rows: dict[str, dict[str, list[float]]] = {}
    share: dict[str, list[float] | None] = {}
    for method in result.methods:
        if method == "reference":
            continue
        mine = _outcomes(result, method)
        rows[method] = {name: paired_difference(mine, _outcomes(result, other), replicates=reps).to_list()
                        for name, other in baselines.items() if other != method}
        if "oracle" in present and "reference" in present:
            got = gain_share(mine, _outcomes(result, "oracle"), _outcomes(result, "reference"), replicates=reps)
            share[method] = got.to_list() if got else None
    heldout: dict[str, Any] = {"domain": config.heldout_domain, "owner": None, "rows": {}}
    owner = next((c.name for c in config.clients if config.heldout_domain in STYLES[c.style].domains), None)
    if owner is not None and "uniform" in present:
        heldout["owner"] = owner
        base = _outcomes(result, "uniform", owner)
        for method in ("uniform", *HELDOUT_ROWS):
            if method in present:
                mine = _outcomes(result, method, owner)
                heldout["rows"][method] = {"win": point_mean(mine),
                                           "vs_uniform": paired_difference(mine, base, replicates=reps).to_list()}
    return {"best_single": best, "seeds": len(result.seeds), "replicates": reps, "rows": rows,
            "oracle_share": share, "heldout": heldout, "goal": goal_check(result, rows, share)}


def goal_check(result: Any, rows: dict[str, dict[str, list[float]]],
               share: dict[str, list[float] | None]) -> dict[str, Any]:
    """Issue #17's goal, per fused-reward row: does it beat uniform, FedAvg and *every* single member
    with a 95% interval of the difference above 0, and reach >= 90% of the oracle router's gain?

    Each single member gets its own paired interval (not only the best one), so "beats every single
    member" is tested as stated. A criterion whose baseline row was not run is ``None`` (not met).
    """
    singles = [m for m in result.methods if m.startswith("single:")]
    skip = {"reference", "oracle", "central", "uniform", "fedavg", *singles}
    out: dict[str, Any] = {}
    for method, cols in rows.items():
        if method in skip:
            continue
        mine = _outcomes(result, method)
        per_single = {m: paired_difference(mine, _outcomes(result, m), replicates=result.config.bootstrap).to_list()
                      for m in singles}
        oracle_share = share.get(method)
        checks: dict[str, bool | None] = {
            "beats uniform": cols["uniform"][1] > 0 if "uniform" in cols else None,
            "beats FedAvg": cols["fedavg"][1] > 0 if "fedavg" in cols else None,
            "beats every single member": all(ci[1] > 0 for ci in per_single.values()) if per_single else None,
            ">= 90% of the oracle's gain": oracle_share[0] >= 0.9 if oracle_share else None,
        }
        out[method] = {"checks": checks, "vs_single": per_single, "met": all(v is True for v in checks.values())}
    return out


__all__ = ["BASELINES", "best_single", "differences", "goal_check"]
