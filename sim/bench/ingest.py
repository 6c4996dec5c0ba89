"""Section 4 — server ingest under load, and the proof that nothing was lost.

For 8, 32 and 64 concurrent synthetic agents (separate processes, real mutual TLS, see
:mod:`sim.bench.synth_agent`) against one server (ckks mode, in this process as
:class:`sim.harness.InProcessServer`), the bench opens enough rounds on the server's own store
that no agent runs dry — as the coordinator opens them, each with its ``round.opened`` audit
entry — lets every agent long-poll and submit for a fixed time, then stops them and reads:

* envelopes/s and scores/s accepted; p50/p99 submission latency (the agents' clocks);
* server CPU seconds per accepted envelope (this process's CPU time; the bench itself only
  sleeps while the agents work);
* **nothing lost**: accepted (HTTP 200s seen by agents) = receipts whose server signature
  verified = submission rows in the database = ``submission.accepted`` audit entries;
* envelopes per group commit (:mod:`server.ingest`).

A level with a failed request, nothing accepted, or counts that do not add up raises
:class:`~sim.errors.BenchMeasurementError`: the section reports failure, never a figure.

Baseline of every ratio: the 8-agent level of the same repeat (how the server scales).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sim.bench.fleet import AgentProcess, agent_names, audit_actions, bench_pki, start_agents, start_server
from sim.bench.stats import Figure, SectionResult, paired, percentile
from sim.errors import BenchMeasurementError
from sim.harness import InProcessServer
from wire.messages import TaskItem, TaskPayload

SECTION = "4 ingest"
LEVELS = (8, 32, 64)
SMOKE_LEVELS = (2, 4)
SCORES_PER_ENVELOPE = 64
RATE_CEILING = 200.0  # envelopes/s we provision tasks for; well above what 2 cores ingest


def open_rounds(server: InProcessServer, agents: list[str], rounds: int, n_items: int, deadline_s: float) -> None:
    """``rounds`` rounds, one task per agent each (no prompts: synthetic agents do not score), audited as opened.

    Why not :meth:`~server.rounds.RoundCoordinator.run_round`: it waits for each round to be
    answered, and the load test needs a backlog. These are the same writes it makes first.
    """
    payload = TaskPayload(kind="score", prompts=[], items=[TaskItem(prompt_index=0, response="r")] * n_items
                          ).model_dump()
    now = time.time()
    for _ in range(rounds):
        round_id = f"score-bench-{uuid.uuid4().hex}"
        tasks = {a: f"{round_id}-{i}" for i, a in enumerate(agents)}
        server.state.create_round(round_id, kind="score", n_items=n_items, deadline=now + deadline_s, now=now,
                                  task_payloads={a: (t, payload) for a, t in tasks.items()})
        server.audit.record("server", "round.opened", {"round_id": round_id, "kind": "score", "n_prompts": 0,
                                                       "n_items": n_items, "deadline": now + deadline_s,
                                                       "quorum": len(agents), "tasks": tasks})


def _level(server: InProcessServer, agents: list[AgentProcess], seconds: float) -> dict[str, Any]:
    identities = [a.identity for a in agents]
    rounds = int(RATE_CEILING * seconds / len(agents)) + 5
    open_rounds(server, identities, rounds, SCORES_PER_ENVELOPE, deadline_s=seconds + 120)
    state, audit_dir = server.state, server.runtime.config.server.audit_dir
    rows_before = state.count_submissions()
    audit_before = audit_actions(audit_dir, "submission.accepted")
    cpu_before = server.cpu_seconds()
    groups_before = server.services.ingest.groups
    started = time.monotonic()
    for agent in agents:
        agent.send({"cmd": "work", "max_s": seconds + 30})
    time.sleep(seconds)
    for agent in agents:
        agent.send({"cmd": "stop"})
    results = [agent.reply() for agent in agents]
    elapsed = time.monotonic() - started  # includes the last in-flight submissions
    cpu = server.cpu_seconds() - cpu_before
    accepted = sum(r["accepted"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {
        "agents": len(agents), "seconds": elapsed, "accepted": accepted,
        "receipts_valid": sum(r["receipts_valid"] for r in results),
        "db_rows": state.count_submissions() - rows_before,
        "audit_entries": audit_actions(audit_dir, "submission.accepted") - audit_before,
        "envelopes_per_s": accepted / elapsed, "cpu_per_envelope_s": cpu / max(accepted, 1),
        "per_commit": accepted / max(server.services.ingest.groups - groups_before, 1),
        "p50_s": percentile(latencies, 50) if latencies else float("nan"),
        "p99_s": percentile(latencies, 99) if latencies else float("nan"), "errors": errors,
    }


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    levels = SMOKE_LEVELS if smoke else LEVELS
    seconds = 2.0 if smoke else 8.0
    repeats = 1 if smoke else min(repeats, 2)
    samples: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
    with tempfile.TemporaryDirectory(prefix="mor-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        pki = bench_pki(tmp, max(levels))
        with start_server(pki, "ckks") as server:
            agents = start_agents(pki, server.url, agent_names(pki), tmp / "agent-logs")
            try:
                with tqdm(total=repeats * len(levels), desc="bench 4 ingest", unit="level", disable=None) as bar:
                    for _ in range(repeats):
                        for n in levels:
                            samples[n].append(_level(server, agents[:n], seconds))
                            bar.update(1)
            finally:
                for agent in agents:
                    agent.close()
    return _result(levels, samples, seconds)


def _lost(samples: dict[int, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Levels whose count does not add up, failed requests, or nothing accepted: name -> its counts."""
    bad = {}
    for n, runs in samples.items():
        for k, r in enumerate(runs):
            counts = {key: r[key] for key in ("accepted", "receipts_valid", "db_rows", "audit_entries", "errors")}
            if r["errors"] or not r["accepted"] or \
                    not r["accepted"] == r["receipts_valid"] == r["db_rows"] == r["audit_entries"]:
                bad[f"{n} agents #{k}"] = counts
    return bad


def _result(levels: tuple[int, ...], samples: dict[int, list[dict[str, Any]]], seconds: float) -> SectionResult:
    """The figures, or :class:`BenchMeasurementError` when any level lost, failed or accepted nothing."""
    bad = _lost(samples)
    if bad:  # a throughput with failed requests or a lost receipt is not a measurement
        raise BenchMeasurementError(f"ingest did not measure cleanly, no figure is reported: {bad}")
    figures: list[Figure] = []
    base = samples[levels[0]]
    checks: dict[str, Any] = {}
    for n in levels:
        runs = samples[n]
        label = f"{n} agents"
        figures.append(paired(SECTION, f"{label}: envelopes/s", "env/s", [r["envelopes_per_s"] for r in runs],
                              f"{levels[0]} agents", [r["envelopes_per_s"] for r in base],
                              scores_per_s=[r["envelopes_per_s"] * SCORES_PER_ENVELOPE for r in runs],
                              envelopes_per_commit=[r["per_commit"] for r in runs]))
        figures.append(paired(SECTION, f"{label}: p50 latency", "s", [r["p50_s"] for r in runs],
                              f"{levels[0]} agents", [r["p50_s"] for r in base]))
        figures.append(paired(SECTION, f"{label}: p99 latency", "s", [r["p99_s"] for r in runs],
                              f"{levels[0]} agents p50", [r["p50_s"] for r in base]))
        figures.append(paired(SECTION, f"{label}: server CPU per envelope", "s",
                              [r["cpu_per_envelope_s"] for r in runs], f"{levels[0]} agents",
                              [r["cpu_per_envelope_s"] for r in base]))
        for k, r in enumerate(runs):
            checks[f"{label} #{k}"] = {key: r[key] for key in ("accepted", "receipts_valid", "db_rows",
                                                                "audit_entries", "errors", "per_commit")}
    checks["nothing_lost"] = True
    notes = [f"{seconds:.0f} s per level, {SCORES_PER_ENVELOPE} scores per envelope, agents re-sign one ciphertext "
             "per task (fresh nonce/timestamp/binding), server and agents share the same cores; envelopes per "
             "group commit in extra.envelopes_per_commit"]
    return SectionResult(figures, notes, checks)
