"""Section 5 — round latency for 2, 4, 8, 16, 32 and 64 agents.

One server (ckks, :class:`sim.harness.InProcessServer`), synthetic agent processes over real
mTLS (:mod:`sim.bench.synth_agent`), and the bench as the server's training side in the
server's process, as ``mor server run`` has it: a :class:`~server.rounds.RoundCoordinator` on
the server's own state store, audit log and privacy-mode object (its CKKS key), with a uniform
router. A round = tasks written, every agent
long-polls its task and submits a signed CKKS envelope, the coordinator sees the quorum
(all agents), re-verifies, decrypts (audited) and fuses. Agents outside the level are made
not-live (``last_seen`` in the past) so the coordinator asks exactly ``n``.

Baseline of each ratio: the 2-agent round of the same repeat.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from corpus.types import Prompt
from server.rounds import RoundCoordinator, RoundPolicy
from server.router import UniformRouter
from server.state import StateStore
from sim.bench.fleet import agent_names, bench_pki, start_agents, start_server
from sim.bench.stats import Figure, SectionResult, paired
from sim.errors import BenchMeasurementError

SECTION = "5 scaling"
LEVELS = (2, 4, 8, 16, 32, 64)
SMOKE_LEVELS = (2, 4)
ITEMS = 64


def _prompt() -> Prompt:
    from PIL import Image

    return Prompt("bench-p0", Image.new("RGB", (64, 64), (90, 30, 30)), "what colour is it?", "general", None)


def _wait_live(state: StateStore, identities: list[str], timeout_s: float = 120.0) -> None:
    """Until every agent of the level has polled since it was made not-live (a fixed 0.5 s sleep was not
    enough for 64 agent processes on a loaded machine: the coordinator then asked fewer and the round
    was skipped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = {a["identity"] for a in state.list_agents() if a["last_seen"]}
        if seen >= set(identities):
            return
        time.sleep(0.05)
    raise BenchMeasurementError(f"{len(set(identities) - seen)} agents did not poll within {timeout_s:.0f} s")


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    levels = SMOKE_LEVELS if smoke else LEVELS
    repeats = 1 if smoke else repeats
    logging.getLogger("server.rounds").setLevel(logging.ERROR)
    latency: dict[int, list[float]] = {n: [] for n in levels}
    server_cpu: dict[int, list[float]] = {n: [] for n in levels}  # API + coordinator: this process's CPU
    agents_cpu: dict[int, list[float]] = {n: [] for n in levels}  # the agent processes', on the same cores
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="mor-bench-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        pki = bench_pki(tmp, max(levels))
        with start_server(pki, "ckks") as server:
            state = server.state
            agents = start_agents(pki, server.url, agent_names(pki), tmp / "agent-logs")
            try:
                prompt = _prompt()
                items = [(0, f"answer {i}") for i in range(ITEMS)]
                with tqdm(total=repeats * len(levels), desc="bench 5 scaling", unit="round", disable=None) as bar:
                    for _ in range(repeats):
                        for n in levels:
                            active = agents[:n]
                            for agent in agents[n:]:
                                state.touch_agent(agent.identity, 0.0)
                            for agent in active:
                                agent.send({"cmd": "work", "max_s": 300})
                            _wait_live(state, [a.identity for a in active])
                            coordinator = RoundCoordinator(
                                state=state, audit=server.audit, privacy=server.services.privacy,
                                router=UniformRouter([a.identity for a in active]),
                                policy=RoundPolicy(quorum=n, deadline_s=120.0), show_progress=False,
                                features=lambda ps: torch.zeros(len(ps), 4))
                            started, cpu = time.perf_counter(), server.cpu_seconds()
                            agents_before = sum(a.cpu_seconds() for a in active)
                            result = coordinator.run_round("score", [prompt], items)
                            latency[n].append(time.perf_counter() - started)
                            server_cpu[n].append(server.cpu_seconds() - cpu)
                            agents_cpu[n].append(sum(a.cpu_seconds() for a in active) - agents_before)
                            skipped += int(result.skipped)
                            for agent in active:
                                agent.send({"cmd": "stop"})
                            for agent in active:
                                agent.reply()
                            bar.update(1)
            finally:
                for agent in agents:
                    agent.close()
    return _result(levels, latency, skipped, repeats, server_cpu, agents_cpu)


def _result(levels: tuple[int, ...], latency: dict[int, list[float]], skipped: int, repeats: int,
            server_cpu: dict[int, list[float]] | None = None,
            agents_cpu: dict[int, list[float]] | None = None) -> SectionResult:
    """Round latency per level against the smallest, or :class:`BenchMeasurementError` if any round was skipped."""
    if skipped or any(len(latency[n]) != repeats for n in levels):
        # a skipped round's "latency" is its deadline: no figure rather than a false one
        raise BenchMeasurementError(f"{skipped} of {repeats * len(levels)} scaling rounds were skipped (quorum not "
                                    "met) or not run: no latency figure is reported")
    figures: list[Figure] = [paired(SECTION, f"round latency, {n} agents", "s", latency[n], f"{levels[0]} agents",
                                    latency[levels[0]], items=ITEMS, server_cpu_s=(server_cpu or {}).get(n, []),
                                    agents_cpu_s=(agents_cpu or {}).get(n, []))
                           for n in levels]
    notes = [f"{ITEMS} scores per agent per round, ckks; coordinator and long-polls woken by the service's "
             "commits (server.round_events), verified envelopes handed over in memory; agents post the binary "
             f"envelope form; {os.cpu_count()} cores shared by the server and every agent process: extra.server_cpu_s "
             "and extra.agents_cpu_s are each side's CPU seconds per round"]
    return SectionResult(figures, notes, {"rounds_skipped": skipped})
