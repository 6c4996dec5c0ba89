"""Section 6, second part — the GRPO step with the trainer apart from the service (``mor server train``).

One GRPO run alternates three reward functions step by step (as :mod:`sim.bench.grpo_step`
does, so a burst of load hits all alike): the in-process reward; the federated reward with
the coordinator in the trainer's process (``mor server run``); and the same federated reward
through :class:`~server.round_transport.RemoteRounds` — over mutual TLS with a ``trainer``
certificate to the service's ``/v1/trainer/rounds``, where :class:`~server.trainer_rounds.TrainerRounds`
runs the round. Both federated variants share one service (real API thread, state store, audit
log, CKKS) and the same three synthetic member processes answering over mTLS, so their ratio is
what the split itself costs per step.

Overlap of scoring with generation (issue 16 §2, :mod:`server.grpo_overlap`): the trainer-apart
reward runs twice in the same GRPO run, *sequential* (TRL's reward call opens the round and
waits, as before) and *overlapped* (each step's slice of the generation batch is sent the
moment it is decoded, while the next slice is generated and the log-probabilities computed).
Variants alternate per generation batch, not per reward call, since an overlapped batch makes
one round per step's slice. Two runs per repeat: ``steps_per_generation`` 1 (the round can
only hide behind the log-probability forward passes) and :data:`SPG` (it also hides behind the
next slices' generation). Per batch the section records the rounds' wall time and how long
TRL's reward call still waited (:class:`~server.grpo_overlap.OverlapRecord`): the share of the
round hidden is ``1 - exposed / round``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
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
from sim.bench.grpo_step import FEATURE_DIM, SECTION, features, in_process_reward
from sim.bench.stats import Figure, paired
from sim.errors import BenchMeasurementError

DEADLINE_S = 60.0
SPG = 4  # steps_per_generation of the second run
APART, OVERLAPPED, LOCAL = "trainer apart", "trainer apart, overlapped", "coordinator in the trainer"
OVERLAPPED_1 = "trainer apart, overlapped, one round per batch"
WAIT, WAIT_OVERLAPPED = "round as waiting only", "round as waiting only, overlapped"


def _timed(reward: Callable[..., Any], seen: list[float]) -> Callable[..., Any]:
    """``reward``, recording each call's wall time (a round's, for the waiting-only model below)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return reward(*args, **kwargs)
        finally:
            seen.append(time.perf_counter() - start)

    return timed


def _waiting(reward: Callable[..., Any], seen: list[float]) -> Callable[..., Any]:
    """The in-process reward after sleeping as long as the real rounds took (median, warm-up round left out).

    A model of members and service on other machines: the round costs the trainer's machine
    nothing but time, which is what the overlap can hide where compute is not shared.
    """

    def waiting(*args: Any, **kwargs: Any) -> Any:
        time.sleep(statistics.median(seen[1:] or seen or [0.0]))
        return reward(*args, **kwargs)

    return waiting


def _variants(server: Any, members: Sequence[str], prompts: Sequence[Prompt], http: httpx.Client, run_id: str,
              *, local_too: bool) -> tuple[dict[str, Callable[..., Any]], list[FederatedReward]]:
    """S = 1: in-process, trainer apart (sequential, overlapped), coordinator in the trainer; S > 1:
    in-process, trainer apart (sequential, overlapped one round per step / per batch), the waiting-only
    model (sequential, overlapped one round per batch: the same items per round as sequential)."""
    router = LearnedRouter(tuple(members), feature_dim=FEATURE_DIM, hidden=16, seed=1)  # as section 6's, here's members
    coordinator = RoundCoordinator(state=server.state, audit=server.audit, privacy=server.services.privacy,
                                   router=router, policy=RoundPolicy(quorum=3, deadline_s=DEADLINE_S),
                                   features=features, show_progress=False)
    rounds = TrainerRounds(audit=server.audit, deadline_s=DEADLINE_S)
    rounds.set_ready(coordinator, prompts)
    server.api.server.config.app.state.trainer_rounds = rounds  # what `serve --training` attaches
    remote = [FederatedReward(RemoteRounds(http, poll_wait_s=10.0), prompts, run_id=f"{run_id}-{k}") for k in (0, 1)]
    sequential_rounds: list[float] = []
    overlapped_rounds: list[float] = []
    variants: dict[str, Callable[..., Any]] = {"in-process": in_process_reward(prompts),
                                               APART: _timed(remote[0], sequential_rounds),
                                               OVERLAPPED: _timed(remote[1], overlapped_rounds)}
    federated = list(remote)
    if local_too:
        federated.append(FederatedReward(coordinator, prompts))
        variants[LOCAL] = federated[-1]
    else:  # the waiting model sleeps as long as the sequential rounds took (same items per round)
        remote.append(FederatedReward(RemoteRounds(http, poll_wait_s=10.0), prompts, run_id=f"{run_id}-2"))
        variants[OVERLAPPED_1] = remote[-1]
        federated.append(remote[-1])
        variants[WAIT] = _waiting(in_process_reward(prompts), sequential_rounds)
        variants[WAIT_OVERLAPPED] = _waiting(in_process_reward(prompts), sequential_rounds)
    return variants, federated


def _run_batches(policy: Path, prompts: Sequence[Prompt], variants: dict[str, Callable[..., Any]], out: Path,
                 rounds: int, spg: int) -> dict[str, dict[str, float]]:
    """One GRPO run; generation batch j (``spg`` steps) uses variant j mod V; the first V batches are dropped.

    Each variant's first batch pays one-off costs (the trainer's warm-up, the first round of a run
    id in the service), so each variant gets a warm-up batch of its own.

    Returns per variant the median step time, and the median round wall time and time TRL's
    reward call waited per batch.
    """
    from server.grpo import GRPORunConfig, run_grpo

    names = list(variants)

    def variant_of(step: int) -> str:
        return names[(step // spg) % len(names)]

    def reward(*args: Any, trainer_state: Any, **kwargs: Any) -> Any:
        return variants[variant_of(int(trainer_state.global_step))](*args, trainer_state=trainer_state, **kwargs)

    reward.__name__ = "bench_reward"
    stamps: list[float] = []
    batches = (1 + rounds) * len(names)
    config = GRPORunConfig(output_dir=out, max_steps=batches * spg, group_size=4, per_device_batch=8,
                           max_completion_length=16, save_steps=10_000, seed=0, steps_per_generation=spg,
                           overlap_scoring=True)  # rounds_when picks the batches
    result = run_grpo(model_path=policy, prompts=prompts, reward_fn=reward, config=config, resume=False,
                      step_logger=lambda _record: stamps.append(time.perf_counter()),
                      rounds_when=lambda step: {OVERLAPPED: spg, OVERLAPPED_1: 1, WAIT_OVERLAPPED: 1}.get(
                          variant_of(step), 0))
    if len(stamps) != batches * spg or len(result.overlap) != batches:
        raise BenchMeasurementError(f"GRPO run logged {len(stamps)} steps and {len(result.overlap)} reward calls, "
                                    f"expected {batches * spg} and {batches}")
    samples: dict[str, dict[str, list[float]]] = {n: {"step": [], "round": [], "exposed": []} for n in names}
    for record in result.overlap[len(names):]:
        j = record.step // spg
        got = samples[variant_of(record.step)]
        got["step"].append((stamps[(j + 1) * spg - 1] - stamps[j * spg - 1]) / spg)
        got["round"].append(record.round_s)
        got["exposed"].append(record.exposed_s)
    return {n: {k: statistics.median(v) for k, v in got.items()} for n, got in samples.items()}


def _overlap_figures(got: dict[str, dict[str, list[float]]], seq: str, over: str, what: str, at: str,
                     how: str = "overlapped") -> list[Figure]:
    base = got["in-process"]["step"]
    return [
        paired(SECTION, f"GRPO step, {seq}, sequential ({what}, {at})", "s", got[seq]["step"],
               "in-process reward", base),
        paired(SECTION, f"GRPO step, {seq}, {how} ({what}, {at})", "s", got[over]["step"],
               "in-process reward", base),
        paired(SECTION, f"GRPO step, {seq}, {how} vs sequential ({at})", "s", got[over]["step"],
               "sequential", got[seq]["step"]),
        paired(SECTION, f"{seq}: round time left on the critical path, {how} ({at}; 1 - ratio = share hidden)",
               "s", got[over]["exposed"], "round wall time", got[over]["round"]),
    ]


def measure(*, policy: Path, prompts: Sequence[Prompt], repeats: int, rounds: int) -> list[Figure]:
    """Per repeat two GRPO runs (steps_per_generation 1 and :data:`SPG`) alternating the variants per batch."""
    runs: dict[int, dict[str, dict[str, list[float]]]] = {1: {}, SPG: {}}
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
                    for spg, got in runs.items():
                        variants, feds = _variants(server, [a.identity for a in agents], prompts, http,
                                                   f"bench-s{spg}-r{r}", local_too=spg == 1)
                        federated.extend(feds)
                        medians = _run_batches(policy, prompts, variants, tmp / f"run{r}-s{spg}", rounds, spg)
                        for name, values in medians.items():
                            for what, value in values.items():
                                got.setdefault(name, {}).setdefault(what, []).append(value)
        finally:
            for agent in agents:
                agent.send({"cmd": "stop"})
                agent.close()
            server.close()
    skipped = sum(1 for fed in federated for res in fed.results if res.skipped)
    if skipped:
        raise BenchMeasurementError(f"{skipped} federated rounds were skipped (below quorum): no step-time figure")
    what = "3 member processes over mTLS, ckks"
    figures = []
    for spg, got in runs.items():
        at = f"steps_per_generation {spg}"
        if spg == 1:
            figures += _overlap_figures(got, APART, OVERLAPPED, what, at)
            continue
        figures += _overlap_figures(got, APART, OVERLAPPED, what, at, "overlapped, one round per step")
        figures += _overlap_figures(got, APART, OVERLAPPED_1, what, at, "overlapped, one round per batch")[1:]
        figures += _overlap_figures(got, WAIT, WAIT_OVERLAPPED, "in-process reward + sleep of the sequential "
                                    "rounds' median", at, "overlapped, one round per batch")
    local = runs[1][LOCAL]
    figures += [
        paired(SECTION, f"GRPO step, coordinator in the trainer, sequential ({what}, steps_per_generation 1)", "s",
               local["step"], "in-process reward", runs[1]["in-process"]["step"]),
        paired(SECTION, "GRPO step, trainer apart vs coordinator in the trainer (cost of the split, sequential)", "s",
               runs[1][APART]["step"], LOCAL, local["step"]),
        paired(SECTION, "reward call, trainer apart vs coordinator in the trainer (sequential)", "s",
               runs[1][APART]["exposed"], LOCAL, local["exposed"]),
    ]
    return figures
