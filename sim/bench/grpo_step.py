"""Section 6 — one GRPO step with the federated reward vs. an in-process reward function.

Same policy checkpoint, same prompts, same seed, same group size, same three score functions
(:mod:`sim.bench.scorers`) and the same router: in-process, the reward function scores and
fuses directly; federated, it is :class:`server.federated_reward.FederatedReward`, so each
TRL reward call becomes a round in a real :class:`~server.state.StateStore`, answered by
three agent threads that seal real CKKS envelopes (:mod:`sim.bench.thread_agents`), then
re-verified, decrypted (audited in a real audit log) and fused by the coordinator.

Step time is the interval between consecutive TRL step logs (the first step, which includes
trainer warm-up, is dropped), so both sides pay the same generation, loss and optimiser cost
and the ratio shows what federation adds per step. The reward call alone is reported too.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from corpus.types import Prompt
from server.federated_reward import FederatedReward, completion_text
from server.rounds import RoundPolicy
from server.router import LearnedRouter
from sim.bench.scorers import SCORERS
from sim.bench.stats import SectionResult, paired
from sim.bench.thread_agents import ThreadAgents
from sim.errors import BenchMeasurementError

SECTION = "6 grpo"
AGENTS = ("mor://bench/client/alice", "mor://bench/client/bob", "mor://bench/client/carol")
FEATURE_DIM = 8
OLD_POLL_S = 0.1  # RoundPolicy's default before the fix this section measured
NEW_POLL_S = RoundPolicy(quorum=1, deadline_s=1.0).poll_interval_s  # the default now (server/trainer.py uses it)


def features(prompts: Sequence[Prompt]) -> torch.Tensor:
    """Deterministic per-prompt router features (the real encoders cost the same on both sides)."""
    rows = []
    for p in prompts:
        seed = int(hashlib.sha256(p.prompt_id.encode()).hexdigest()[:8], 16)
        rows.append(torch.randn(FEATURE_DIM, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


def _router() -> LearnedRouter:
    return LearnedRouter(AGENTS, feature_dim=FEATURE_DIM, hidden=16, seed=1)


def in_process_reward(prompts: Sequence[Prompt]) -> Callable[..., list[float]]:
    """The baseline reward: same scorers and router, no rounds, no crypto."""
    by_id = {p.prompt_id: p for p in prompts}
    router = _router()

    def in_process(prompts: list[Any], completions: list[Any], prompt_id: Sequence[str], **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        questions = [by_id[pid].question for pid in prompt_id]
        scores = {a: torch.tensor([f(q, t) for q, t in zip(questions, texts, strict=True)], dtype=torch.float64)
                  for a, f in zip(AGENTS, SCORERS, strict=True)}
        return [float(v) for v in router.fuse(features([by_id[pid] for pid in prompt_id]), scores).tolist()]

    in_process.__name__ = "in_process_reward"
    return in_process


def _alternating(variants: dict[str, Callable[..., Any]]) -> tuple[Callable[..., Any], list[tuple[str, float]]]:
    """One reward function that hands successive TRL calls to each variant in turn (and times them)."""
    names = list(variants)
    calls: list[tuple[str, float]] = []

    def reward(*args: Any, **kwargs: Any) -> Any:
        name = names[len(calls) % len(names)]
        start = time.perf_counter()
        try:
            return variants[name](*args, **kwargs)
        finally:
            calls.append((name, time.perf_counter() - start))

    reward.__name__ = "bench_reward"
    return reward, calls


def _run(policy: Path, prompts: Sequence[Prompt], variants: dict[str, Callable[..., Any]], out: Path,
         rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """One GRPO run; step k uses variant k mod V. Returns median step and reward-call seconds per variant.

    Interleaving the variants inside one run (rather than one run each) is what makes the ratio
    stable on a shared machine: a burst of load hits every variant alike.
    """
    from server.grpo import GRPORunConfig, run_grpo

    reward, calls = _alternating(variants)
    stamps: list[float] = []
    steps = 1 + rounds * len(variants)
    config = GRPORunConfig(output_dir=out, max_steps=steps, group_size=4, per_device_batch=8,
                           max_completion_length=16, save_steps=10_000, seed=0,
                           overlap_scoring=False)  # these figures time the round on the critical path
    run_grpo(model_path=policy, prompts=prompts, reward_fn=reward, config=config, resume=False,
             step_logger=lambda _record: stamps.append(time.perf_counter()))
    step_time: dict[str, list[float]] = {n: [] for n in variants}
    call_time: dict[str, list[float]] = {n: [] for n in variants}
    for k, (name, seconds) in enumerate(calls):
        call_time[name].append(seconds)
        if 1 <= k < len(stamps):  # step 0 carries the trainer's warm-up
            step_time[name].append(stamps[k] - stamps[k - 1])
    return ({n: statistics.median(v) for n, v in step_time.items()},
            {n: statistics.median(v) for n, v in call_time.items()})


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    """Per repeat, one GRPO run alternating in-process / federated (old poll) / federated (current poll)."""
    from corpus.prompts import build_prompts
    from server.vlm import build_small_vlm

    rounds = 1 if smoke else 3
    notes = [f"each repeat is one GRPO run of {1 + 3 * rounds} steps (2 prompts x group 4) cycling through the "
             "variants; step 0 dropped; agents poll the store every 10 ms"]
    logging.getLogger("server.rounds").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="mor-bench-grpo-") as tmp_name:
        tmp = Path(tmp_name)
        policy = build_small_vlm(tmp / "policy", seed=seed)
        prompts = build_prompts(8, seed=seed)
        world = ThreadAgents(tmp / "federation", AGENTS, SCORERS).start()
        steps: dict[str, list[float]] = {}
        calls: dict[str, list[float]] = {}
        federated: list[FederatedReward] = []
        try:
            for r in range(repeats):
                variants: dict[str, Callable[..., Any]] = {"in-process": in_process_reward(prompts)}
                for label, poll in (("federated-before", OLD_POLL_S), ("federated", NEW_POLL_S)):
                    fed = FederatedReward(world.coordinator(_router(), features, quorum=len(AGENTS),
                                                            poll_interval_s=poll), prompts)
                    federated.append(fed)
                    variants[label] = fed
                step_t, call_t = _run(policy, prompts, variants, tmp / f"run{r}", rounds)
                for name in variants:
                    steps.setdefault(name, []).append(step_t[name])
                    calls.setdefault(name, []).append(call_t[name])
        finally:
            world.close()
        from sim.bench.grpo_split import SPG, measure  # the trainer apart from the service (issue 16 §2)

        split = measure(policy=policy, prompts=prompts, repeats=repeats, rounds=rounds)
    skipped = sum(1 for fed in federated for res in fed.results if res.skipped)
    if skipped:  # a step whose round was skipped paid no reward: timing it would flatter federation
        raise BenchMeasurementError(f"{skipped} federated rounds were skipped (below quorum): no step-time figure")
    figures = []
    for label, poll in (("federated-before", OLD_POLL_S), ("federated", NEW_POLL_S)):
        what = f"3 agents, ckks, coordinator poll {poll}s"
        figures.append(paired(SECTION, f"GRPO step, {what}", "s", steps[label], "in-process reward",
                              steps["in-process"], skipped_rounds=skipped))
        figures.append(paired(SECTION, f"reward call, {what}", "s", calls[label], "in-process call",
                              calls["in-process"]))
    figures.append(paired(SECTION, f"reward call, coordinator poll {NEW_POLL_S}s vs {OLD_POLL_S}s (after/before)",
                          "s", calls["federated"], f"poll {OLD_POLL_S}s", calls["federated-before"]))
    notes.append("trainer apart: a second GRPO run per repeat alternating in-process / coordinator in the trainer / "
                 "mor server train's transport (mTLS to /v1/trainer/rounds), 3 synthetic member processes over mTLS "
                 "(sim/bench/grpo_split.py), the trainer-apart reward sequential and overlapped "
                 f"(server/grpo_overlap.py), at steps_per_generation 1 and {SPG}; variants alternate per batch")
    return SectionResult(figures + split, notes)
