"""Section 6, second part — the GRPO step with the trainer apart from the service (``mor server train``).

One GRPO run alternates three reward functions step by step (as :mod:`sim.bench.grpo_step`
does, so a burst of load hits all alike): the in-process reward; the federated reward with
the coordinator in the trainer's process (``mor server run``); and the same federated reward
through :class:`~server.round_transport.RemoteRounds` — over mutual TLS with a ``trainer``
certificate to the service's ``/v1/trainer/rounds``, where :class:`~server.trainer_rounds.TrainerRounds`
runs the round. Both federated variants share one service (real API thread, state store, audit
log, CKKS) and the same three synthetic member processes answering over mTLS, so their ratio is
what the split itself costs per step.

Overlap of scoring with generation: none. TRL 1.16 computes rewards inside
``GRPOTrainer._generate_and_score_completions`` after generation and the reference model's
forward pass, and waits for them (an ``async def`` reward function runs on TRL's event loop,
concurrently with the *other* reward functions only); the next batch is generated after the
optimizer step. So the figures are with scoring on the critical path, stated as such.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from corpus.types import Prompt
from server.federated_reward import FederatedReward
from server.round_transport import RemoteRounds
from server.rounds import RoundCoordinator, RoundPolicy
from server.router import LearnedRouter
from server.trainer_rounds import TrainerRounds
from sim.bench.fleet import agent_names, bench_pki, start_agents, start_server
from sim.bench.grpo_step import FEATURE_DIM, SECTION, _run, features, in_process_reward
from sim.bench.stats import Figure, paired
from sim.errors import BenchMeasurementError

DEADLINE_S = 60.0


def _variants(server: Any, members: Sequence[str], prompts: Sequence[Prompt], http: httpx.Client
              ) -> tuple[dict[str, Callable[..., Any]], list[FederatedReward]]:
    router = LearnedRouter(tuple(members), feature_dim=FEATURE_DIM, hidden=16, seed=1)  # as section 6's, here's members
    coordinator = RoundCoordinator(state=server.state, audit=server.audit, privacy=server.services.privacy,
                                   router=router, policy=RoundPolicy(quorum=3, deadline_s=DEADLINE_S),
                                   features=features, show_progress=False)
    rounds = TrainerRounds(audit=server.audit, deadline_s=DEADLINE_S)
    rounds.set_ready(coordinator, prompts)
    server.api.server.config.app.state.trainer_rounds = rounds  # what `serve --training` attaches
    local = FederatedReward(coordinator, prompts)
    remote = FederatedReward(RemoteRounds(http, poll_wait_s=10.0), prompts, run_id="bench")
    return {"in-process": in_process_reward(prompts), "federated": local, "federated, trainer apart": remote}, \
        [local, remote]


def measure(*, policy: Path, prompts: Sequence[Prompt], repeats: int, rounds: int) -> list[Figure]:
    """Per repeat one GRPO run alternating the three variants; figures paired per repeat."""
    steps: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    federated: list[FederatedReward] = []
    with tempfile.TemporaryDirectory(prefix="mor-bench-split-") as tmp_name:
        tmp = Path(tmp_name)
        pki = bench_pki(tmp, 3)
        trainer = pki.issue("trainer", "trainer")
        server = start_server(pki, "ckks")
        agents = start_agents(pki, server.url, agent_names(pki), tmp / "logs")
        try:
            for agent in agents:
                agent.send({"cmd": "work", "max_s": 3600})
            with httpx.Client(base_url=server.url, verify=trainer.client_context(), timeout=60.0) as http:
                for r in range(repeats):
                    variants, feds = _variants(server, [a.identity for a in agents], prompts, http)
                    federated.extend(feds)
                    step_t, call_t = _run(policy, prompts, variants, tmp / f"run{r}", rounds)
                    for name in variants:
                        steps.setdefault(name, []).append(step_t[name])
                        calls.setdefault(name, []).append(call_t[name])
        finally:
            for agent in agents:
                agent.send({"cmd": "stop"})
                agent.close()
            server.close()
    skipped = sum(1 for fed in federated for res in fed.results if res.skipped)
    if skipped:
        raise BenchMeasurementError(f"{skipped} federated rounds were skipped (below quorum): no step-time figure")
    apart, local = "federated, trainer apart", "federated"
    what = "3 member processes over mTLS, ckks, no overlap (TRL scores synchronously)"
    return [
        paired(SECTION, f"GRPO step, trainer apart ({what})", "s", steps[apart], "in-process reward",
               steps["in-process"]),
        paired(SECTION, f"GRPO step, coordinator in the trainer ({what})", "s", steps[local], "in-process reward",
               steps["in-process"]),
        paired(SECTION, "GRPO step, trainer apart vs coordinator in the trainer (cost of the split)", "s",
               steps[apart], "coordinator in the trainer", steps[local]),
        paired(SECTION, "reward call, trainer apart vs coordinator in the trainer", "s", calls[apart],
               "coordinator in the trainer", calls[local]),
    ]
