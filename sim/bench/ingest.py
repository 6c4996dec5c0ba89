"""Section 4 — server ingest: the JSON and the binary envelope transport against one server, nothing lost.

Why replaying senders and not one process per agent: on this 2-core machine 64 agent processes
spent as much CPU signing, encoding and sending as the server spent ingesting, so the section
measured the machine. Here two sender processes (:mod:`sim.bench.replay_agent`) hold ``n``
persistent mutual-TLS connections between them; every envelope is sealed and signed **before**
the timed phase (fresh nonce, timestamp, round and task binding each), so while the clock runs
the senders only write bytes and the server does all of its per-envelope work: TLS, HTTP,
parsing, signature, binding, freshness, nonce, CKKS structural check, audit entry, receipt,
group commit.

For 8, 32 and 64 concurrent connections, and for each transport — ``json`` (``POST
/v1/submissions``, base64 ciphertexts, the baseline) and ``binary`` (``POST
/v1/submissions/binary``, what agents send) — in alternating order per repeat:

* server CPU per accepted envelope and envelopes/s per server core (the server is this
  process — :class:`sim.harness.InProcessServer` — and the bench only waits meanwhile, so this
  process's CPU time is the server's);
* envelopes/s and p50/p99 latency (the senders' clocks; closed loop: each connection sends its
  next envelope when the last is answered, so latency is the queue ``n`` connections keep);
* **nothing lost**: accepted (HTTP 200s) = receipts whose server signature and envelope digest
  verified = submission rows = ``submission.accepted`` audit entries; envelopes per group commit.

With ``compare_http`` (``mor bench --sections 4 --compare-http``) the two variants are instead
the binary transport over uvicorn's pure-Python h11 parser (the baseline) and over httptools
(what the server serves with, :mod:`server.mtls`): the same server, switched between levels
for the connections each level opens.

A level with a failed request, nothing accepted, or counts that do not add up raises
:class:`~sim.errors.BenchMeasurementError`: the section reports failure, never a figure.
Baseline of every ratio: the first variant (JSON, or binary over h11) at the same level in the
same repeat.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.mtls import use_http
from sim.bench.fleet import AgentProcess, agent_names, audit_actions, bench_pki, start_server
from sim.bench.ingest_stages import stage_costs
from sim.bench.stats import Figure, SectionResult, paired, percentile
from sim.errors import BenchMeasurementError
from sim.harness import InProcessServer
from wire.messages import TaskItem, TaskPayload

SECTION = "4 ingest"
LEVELS = (8, 32, 64)
SMOKE_LEVELS = (4,)
TRANSPORTS = ("json", "binary")  # the first is the baseline
HTTP_VARIANTS = ("binary/h11", "binary/httptools")  # --compare-http: transport/HTTP parser, the first the baseline
SENDERS = 2
SCORES_PER_ENVELOPE = 64
ENVELOPES = 320  # per level and transport: ~5 per connection at 64, enough to amortise each connection's handshake
SMOKE_ENVELOPES = 8


def open_rounds(server: InProcessServer, agents: list[str], rounds: int, n_items: int,
                deadline_s: float) -> dict[str, list[tuple[str, str]]]:
    """``rounds`` rounds, one task per agent each, audited as opened; agent -> its ``(round_id, task_id)`` s.

    Why not :meth:`~server.rounds.RoundCoordinator.run_round`: it waits for each round to be
    answered, and the load test needs a backlog. These are the same writes it makes first.
    """
    payload = TaskPayload(kind="score", prompts=[], items=[TaskItem(prompt_index=0, response="r")] * n_items
                          ).model_dump()
    now = time.time()
    issued: dict[str, list[tuple[str, str]]] = {a: [] for a in agents}
    for _ in range(rounds):
        round_id = f"score-bench-{uuid.uuid4().hex}"
        tasks = {a: f"{round_id}-{i}" for i, a in enumerate(agents)}
        server.state.create_round(round_id, kind="score", n_items=n_items, deadline=now + deadline_s, now=now,
                                  task_payloads={a: (t, payload) for a, t in tasks.items()})
        server.audit.record("server", "round.opened", {"round_id": round_id, "kind": "score", "n_prompts": 0,
                                                       "n_items": n_items, "deadline": now + deadline_s,
                                                       "quorum": len(agents), "tasks": tasks})
        for agent, task_id in tasks.items():
            issued[agent].append((round_id, task_id))
    return issued


def _level(server: InProcessServer, senders: list[AgentProcess], connections: int, envelopes: int,
           variant: str) -> dict[str, Any]:
    """One timed burst of ``envelopes`` pre-sealed envelopes over ``connections`` connections.

    ``variant``: a transport ("json", "binary"), or "transport/parser" for the HTTP parser that
    serves this level's (new) connections; a bare transport is served with the default parser.
    """
    transport, _, http = variant.partition("/")
    use_http(server.api.server.config, http or "auto")
    issued = open_rounds(server, [s.identity for s in senders], -(-envelopes // len(senders)),
                         SCORES_PER_ENVELOPE, deadline_s=600.0)
    for sender in senders:
        sender.send({"cmd": "prepare", "tasks": issued[sender.identity], "transport": transport})
    for sender in senders:
        sender.reply()
    state, audit_dir = server.state, server.runtime.config.server.audit_dir
    rows_before = state.count_submissions()
    audit_before = audit_actions(audit_dir, "submission.accepted")
    groups_before = server.services.ingest.groups
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    for k, sender in enumerate(senders):
        sender.send({"cmd": "send", "threads": connections // len(senders) + int(k < connections % len(senders))})
    results = [sender.reply() for sender in senders]
    elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu_before
    accepted = sum(r["accepted"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {
        "connections": connections, "transport": variant, "seconds": elapsed, "accepted": accepted,
        "receipts_valid": sum(r["receipts_valid"] for r in results),
        "db_rows": state.count_submissions() - rows_before,
        "audit_entries": audit_actions(audit_dir, "submission.accepted") - audit_before,
        "envelopes_per_s": accepted / elapsed, "cpu_per_envelope_s": cpu / max(accepted, 1),
        "per_commit": accepted / max(server.services.ingest.groups - groups_before, 1),
        "p50_s": percentile(latencies, 50) if latencies else float("nan"),
        "p99_s": percentile(latencies, 99) if latencies else float("nan"), "errors": errors,
    }


def run(*, repeats: int, smoke: bool = False, seed: int = 0, compare_http: bool = False) -> SectionResult:
    variants = HTTP_VARIANTS if compare_http else TRANSPORTS
    levels = SMOKE_LEVELS if smoke else LEVELS
    envelopes = SMOKE_ENVELOPES if smoke else ENVELOPES
    repeats = 1 if smoke else min(repeats, 3)
    samples: dict[tuple[int, str], list[dict[str, Any]]] = {(n, t): [] for n in levels for t in variants}
    with tempfile.TemporaryDirectory(prefix="mor-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        pki = bench_pki(tmp, SENDERS)
        with start_server(pki, "ckks") as server:
            senders = [AgentProcess(pki, name, server.url, log_dir=tmp / "sender-logs",
                                    module="sim.bench.replay_agent") for name in agent_names(pki)]
            try:
                for sender in senders:
                    sender.reply()  # {"ready": ...}: enrolled
                with tqdm(total=repeats * len(levels), desc="bench 4 ingest", unit="level", disable=None) as bar:
                    for k in range(repeats):
                        for n in levels:
                            for variant in variants if k % 2 == 0 else variants[::-1]:
                                samples[(n, variant)].append(_level(server, senders, n, envelopes, variant))
                            bar.update(1)
            finally:
                for sender in senders:
                    sender.close()
    stages = {} if smoke else stage_costs(SCORES_PER_ENVELOPE)
    return _result(levels, samples, stages, variants)


def _lost(samples: dict[tuple[int, str], list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Levels whose count does not add up, failed requests, or nothing accepted: name -> its counts."""
    bad = {}
    for (n, transport), runs in samples.items():
        for k, r in enumerate(runs):
            counts = {key: r[key] for key in ("accepted", "receipts_valid", "db_rows", "audit_entries", "errors")}
            if r["errors"] or not r["accepted"] or \
                    not r["accepted"] == r["receipts_valid"] == r["db_rows"] == r["audit_entries"]:
                bad[f"{n} connections {transport} #{k}"] = counts
    return bad


def _value(sample: dict[str, Any], key: str) -> float:
    """A sample's figure; envelopes/s per server core is the inverse of server CPU per envelope."""
    return 1.0 / float(sample["cpu_per_envelope_s"]) if key == "per_core" else float(sample[key])


def _result(levels: tuple[int, ...], samples: dict[tuple[int, str], list[dict[str, Any]]],
            stages: dict[str, float], variants: tuple[str, str] = TRANSPORTS) -> SectionResult:
    """The figures, or :class:`BenchMeasurementError` when any level lost, failed or accepted nothing."""
    bad = _lost(samples)
    if bad:  # a throughput with failed requests or a lost receipt is not a measurement
        raise BenchMeasurementError(f"ingest did not measure cleanly, no figure is reported: {bad}")
    figures: list[Figure] = []
    base_name, new_name = variants
    for n in levels:
        base, new = samples[(n, base_name)], samples[(n, new_name)]
        label = f"{n} connections, {new_name}"
        for what, unit, key in (("server CPU per envelope", "s", "cpu_per_envelope_s"),
                                ("envelopes/s per server core", "env/s/core", "per_core"),
                                ("envelopes/s", "env/s", "envelopes_per_s"), ("p50 latency", "s", "p50_s"),
                                ("p99 latency", "s", "p99_s")):
            commits = {"envelopes_per_commit": [r["per_commit"] for r in new],
                       "baseline_envelopes_per_commit": [r["per_commit"] for r in base]}
            extra = commits if key == "envelopes_per_s" else {}
            figures.append(paired(SECTION, f"{label}: {what}", unit, [_value(r, key) for r in new],
                                  f"{base_name}: {what}", [_value(r, key) for r in base], **extra))
    checks: dict[str, Any] = {f"{n} connections {t} #{k}": {key: r[key] for key in (
        "accepted", "receipts_valid", "db_rows", "audit_entries", "errors", "per_commit")}
        for (n, t), runs in samples.items() for k, r in enumerate(runs)}
    checks["nothing_lost"] = True
    if stages:
        checks["stage_cpu_ms_per_envelope"] = stages
    notes = [f"{SCORES_PER_ENVELOPE} scores per ckks envelope, {SENDERS} sender processes with pre-sealed envelopes "
             f"(server CPU = this process's, {os.cpu_count()} cores shared with the senders); closed loop, each "
             "connection sends when answered; per-stage CPU of one envelope in checks.stage_cpu_ms_per_envelope"]
    return SectionResult(figures, notes, checks)
