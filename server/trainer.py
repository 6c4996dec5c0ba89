"""The server's training run: agents -> calibration -> router -> GRPO, every stage on the record.

Read top to bottom, it is the server's side of the alignment run (docs/architecture.md, "One
alignment run"):

1. wait until at least ``quorum`` agents are enrolled and live;
2. calibration round (kind ``calibrate``) on a public batch: the server measures each agent's
   score mean/std from what the agent actually sends, so calibration matches the scores it
   fuses. Under ``fused-only`` the key holder decrypts these public-round vectors per agent
   only if the policy sets ``privacy.public_rounds_per_agent``; otherwise only calibrations the
   agents reported themselves (``POST /v1/calibration``) can be used; enrolment sends no
   batch, so without such reports agents stay on their own scale (noted in the report);
3. router round (kind ``router``) on the public router pairs: every agent scores chosen and
   rejected; the :class:`~server.router.LearnedRouter` is fitted by Bradley–Terry likelihood
   and ``router.updated`` audited with its digest. Under ``fused-only`` the same, through the
   key holder, when the policy opts in; without it a router fitted earlier is loaded from
   ``router_path`` or the uniform router is kept (loud warning, ``router.unchanged``).
   The router in use is summarised in the state store for the status page: its mean weight
   per agent per prompt domain over the GRPO prompts (:func:`publish_router_weights`);
4. GRPO via :func:`server.grpo.run_grpo` with the :class:`~server.federated_reward.FederatedReward`;
   each step goes to ``metrics.jsonl`` and the audit log (``grpo.step``).

Stopping: ``stop()`` returns a reason once a stop is requested. Before GRPO every wait raises
:class:`~server.errors.ShutdownRequested` (nothing is lost: a restart repeats these stages);
during GRPO the step in flight finishes and is checkpointed, and the report's ``grpo`` says so.

:func:`run_training` is what ``mor server run`` calls with the service's :class:`Services`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from corpus.types import PreferencePair, Prompt
from server.errors import ShutdownRequested, TrainingError
from server.grpo import GRPOResult, GRPORunConfig, RewardFn, StopCheck, run_grpo
from server.quarantine import Quarantine, QuarantinePolicy
from server.rounds import FeatureFn, RoundCoordinator, RoundPolicy, agent_calibration, live_agents
from server.router import LearnedRouter, RouterBase, RouterFitConfig, RouterTrainingSet, make_router
from server.router.capped import cap_router
from server.services import Services
from server.state import StateStore
from server.training_config import TrainingSection, load_training_config
from server.training_data import (
    LoadedSet,
    calibration_round,
    load_calibration,
    load_prompts,
    load_router_pairs,
    record_loaded,
    router_round,
)
from wire.calibration import IDENTITY, Calibration, CalibrationError, calibration_refusal

log = logging.getLogger(__name__)
__all__ = ["PreparedRun", "TrainingReport", "TrainingSection", "load_training_config", "prepare_run", "run_training",
           "train_policy"]


@dataclass
class TrainingReport:
    agents: list[str]
    calibration: dict[str, dict[str, float]]
    router_digest: str
    router_fit: dict[str, Any] | None
    grpo: GRPOResult | None = None
    metrics_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def wait_for_agents(services: Services, quorum: int, timeout_s: float,
                    sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Block until ``quorum`` agents are enrolled and live; TrainingError after ``timeout_s``."""
    window = services.policy.online_window_s
    deadline = services.clock() + timeout_s
    with tqdm(total=quorum, desc="agents enrolled", unit="agent", leave=False, disable=None) as bar:
        while True:
            live = live_agents(services.state, services.clock(), window)
            bar.update(min(len(live), quorum) - bar.n)
            if len(live) >= quorum:
                return live
            if services.clock() >= deadline:
                raise TrainingError(f"only {len(live)} agents enrolled and live after {timeout_s:.0f} s; "
                                    f"quorum is {quorum}")
            sleep(1.0)


def calibrate(coordinator: RoundCoordinator, services: Services, config: TrainingSection, *,
              data: tuple[list[tuple[Prompt, str]], LoadedSet] | None = None) -> dict[str, Calibration]:
    """Stage 2: measured calibration (tls-only/ckks) or the agents' self-reports (fused-only)."""
    if coordinator.privacy.collects_public_rounds:
        batch, loaded = data or load_calibration(config.data, n=config.n_calibration, seed=config.seed)
        record_loaded(loaded, audit=services.audit, state=services.state, actor=coordinator.actor,
                      now=services.clock())
        result = coordinator.run_round("calibrate", *calibration_round(batch))
        for agent, values in (result.vectors or {}).items():
            try:
                scale = Calibration.measure(values)
            except CalibrationError as exc:
                log.warning("agent %s: not calibrated: %s", agent, exc)
                continue
            refusal = calibration_refusal(scale.mean, scale.std, score_min=services.policy.score_min,
                                          score_max=services.policy.score_max)
            if refusal is not None:  # a degenerate scale would let this member's scores swamp the others
                log.warning("agent %s: measured calibration refused: %s", agent, refusal)
                services.audit.record(coordinator.actor, "agent.calibration.refused", {
                    "agent": agent, "mean": scale.mean, "std": scale.std, "reason": refusal,
                    "round_id": result.round_id})
                continue
            measured = {"mean": scale.mean, "std": scale.std, "n": scale.n, "source": "server-measured",
                        "round_id": result.round_id}
            services.state.set_calibration(agent, measured)
            services.audit.record(coordinator.actor, "agent.calibration.measured", {"agent": agent, **measured})
    out: dict[str, Calibration] = {}
    for row in services.state.list_agents():
        cal = agent_calibration(row)
        if cal is not None:
            out[row["identity"]] = cal
    return out


def fit_router_on_public_pairs(coordinator: RoundCoordinator, calibrations: dict[str, Calibration],
                               config: TrainingSection, *,
                               data: tuple[list[PreferencePair], LoadedSet] | None = None
                               ) -> tuple[LearnedRouter, dict[str, Any]]:
    """Stage 3: collect every agent's scores on public pairs and fit the learned router."""
    pairs, loaded = data or load_router_pairs(config.data, n=config.n_public_pairs, seed=config.seed)
    record_loaded(loaded, audit=coordinator.audit, state=coordinator.state, actor=coordinator.actor,
                  now=coordinator.clock())
    result = coordinator.run_round("router", *router_round(pairs))
    if result.vectors is None:
        raise TrainingError(f"router round {result.round_id} skipped: {result.reason}")
    agents = sorted(result.vectors)
    z = torch.stack([calibrations.get(a, IDENTITY).zscore(torch.tensor(result.vectors[a], dtype=torch.float64))
                     for a in agents]).T.to(torch.float32)  # [2N, A]
    features = coordinator.prompt_features([p.prompt for p in pairs])
    training_set = RouterTrainingSet(
        agents=tuple(agents), features=features, chosen=z[0::2], rejected=z[1::2],
        mask=torch.ones(len(pairs), len(agents), dtype=torch.bool),
        domains=tuple(p.prompt.domain for p in pairs), groups=tuple(p.prompt.prompt_id for p in pairs),
    )
    router = LearnedRouter(agents, feature_dim=int(features.shape[1]), seed=config.seed)
    report = router.fit(training_set, RouterFitConfig(seed=config.seed, show_progress=coordinator.show_progress))
    return router, report.to_dict()


def publish_router_weights(state: StateStore, router: RouterBase, features: torch.Tensor, domains: Sequence[str], *,
                           basis: str, now: float) -> dict[str, dict[str, float]]:
    """Record the router now in use for the status page: mean weight per agent, per domain and overall."""
    weights = router.weights(features, list(router.agents))

    def mean(rows: torch.Tensor) -> dict[str, float]:
        return {a: round(float(w), 6) for a, w in zip(router.agents, rows.mean(0).tolist(), strict=True)}

    by_domain = {d: mean(weights[[i for i, x in enumerate(domains) if x == d]]) for d in sorted(set(domains))}
    state.set_router_weights(kind=router.kind, digest=router.digest(), basis=basis, by_domain=by_domain,
                             overall=mean(weights), now=now)
    return by_domain


def _interruptible(sleep: Callable[[float], None], stop: StopCheck) -> Callable[[float], None]:
    """``sleep`` that raises ShutdownRequested once ``stop()`` gives a reason (checked before and after)."""

    def raise_if_stopping() -> None:
        reason = stop()
        if reason is not None:
            raise ShutdownRequested(reason)

    def wait(seconds: float) -> None:
        raise_if_stopping()
        sleep(seconds)
        raise_if_stopping()

    return wait


def _initial_router(config: TrainingSection, agents: Sequence[str]) -> RouterBase:
    if config.router == "fixed":
        return make_router("fixed", agents, weights=config.fixed_weights or {})
    return make_router("uniform", agents)


@dataclass
class PreparedRun:
    """Stages 1-3 done: the coordinator (router fitted and capped) and the GRPO prompts."""

    coordinator: RoundCoordinator
    prompts: list[Prompt]
    report: TrainingReport


def prepare_run(services: Services, config: TrainingSection, *, features: FeatureFn | None = None,
                sleep: Callable[[float], None] = time.sleep, stop: StopCheck = lambda: None,
                show_progress: bool = True, stage: Callable[[str], None] = lambda _s: None) -> PreparedRun:
    """Stages 0-3 (data, agents, calibration, router): what the service does before any GRPO round.

    ``stage`` is told where it is (``mor server serve --training`` shows it to the trainer ranks).
    """
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    audit, actor = services.audit, "server"
    wait = _interruptible(sleep, stop)
    # -- 0. data: a broken dataset is refused before any member is asked for anything -------------
    prompts, prompts_loaded = load_prompts(config.data, n=config.n_prompts, seed=config.seed)
    calibration_data = load_calibration(config.data, n=config.n_calibration, seed=config.seed)
    router_data = load_router_pairs(config.data, n=config.n_public_pairs, seed=config.seed)
    # -- 1. agents --------------------------------------------------------------------------------
    wait(0.0)
    stage("waiting for agents")
    agents = wait_for_agents(services, config.quorum, config.enrol_timeout_s, wait)
    coordinator = RoundCoordinator(
        state=services.state, audit=audit, privacy=services.privacy, router=_initial_router(config, agents),
        features=features, clock=services.clock, sleep=wait, show_progress=show_progress,
        quarantine=Quarantine(services.state, audit, QuarantinePolicy(services.policy.quarantine_after_failures,
                                                                      services.policy.quarantine_s), actor=actor),
        policy=RoundPolicy(quorum=config.quorum, deadline_s=config.deadline_s,
                           online_window_s=services.policy.online_window_s),
    )
    audit.record(actor, "training.started", {"agents": agents, "privacy_mode": services.policy.privacy_mode,
                                             "config": json.loads(config.model_dump_json())})
    report = TrainingReport(agents=agents, calibration={}, router_digest="", router_fit=None)
    stage("calibrating")
    # -- 2. calibration ---------------------------------------------------------------------------
    calibrations = calibrate(coordinator, services, config, data=calibration_data)
    report.calibration = {a: {"mean": c.mean, "std": c.std} for a, c in calibrations.items()}
    missing = sorted(set(agents) - set(calibrations))
    if missing:
        report.notes.append(f"uncalibrated agents (identity scale used): {missing}")
    stage("fitting the router")
    # -- 3. router --------------------------------------------------------------------------------
    router = coordinator.router
    if config.router == "learned" and coordinator.privacy.collects_public_rounds:
        learned, report.router_fit = fit_router_on_public_pairs(coordinator, calibrations, config, data=router_data)
        learned.save(out / "router.safetensors", overwrite=True)
        audit.record(actor, "router.updated", {"digest": learned.digest(), "kind": "learned",
                                               "file": str(out / "router.safetensors"), "fit": report.router_fit})
        router = learned
    elif config.router == "learned" and config.router_path is not None:
        router = LearnedRouter.load(config.router_path, expected_digest=config.router_digest)
        audit.record(actor, "router.updated", {"digest": router.digest(), "kind": "learned",
                                               "file": str(config.router_path), "fit": None})
    else:
        reason = (f"router = {config.router}" if config.router != "learned" else
                  "router not fitted: uniform (fused-only without privacy.public_rounds_per_agent = true: per-agent "
                  "scores are never decrypted; opt in, or set router_path to a router fitted earlier)")
        if config.router == "learned":
            log.warning("ROUTER NOT FITTED: %s", reason)
        report.notes.append(f"router not fitted: {reason}")
        audit.record(actor, "router.unchanged", {"digest": router.digest(), "kind": router.kind, "reason": reason})
    coordinator.set_router(cap_router(router, services.policy.max_member_weight))  # policy [fusion], every mode
    if coordinator.router is not router:
        audit.record(actor, "router.capped", {"digest": coordinator.router.digest(), "inner_digest": router.digest(),
                                              "max_member_weight": services.policy.max_member_weight})
    report.router_digest = coordinator.router.digest()
    record_loaded(prompts_loaded, audit=audit, state=services.state, actor=actor, now=services.clock())
    inputs = coordinator.prompt_features(prompts) if router.kind == "learned" else torch.zeros(len(prompts), 1)
    publish_router_weights(services.state, coordinator.router, inputs, [p.domain for p in prompts],
                           now=services.clock(), basis=f"mean over the {len(prompts)} GRPO training prompts")
    coordinator.sleep = sleep  # from here a stop lets the round in flight finish
    return PreparedRun(coordinator, prompts, report)


def run_training(services: Services, config: TrainingSection, *, features: FeatureFn | None = None,
                 sleep: Callable[[float], None] = time.sleep, stop: StopCheck = lambda: None,
                 show_progress: bool = True) -> TrainingReport:
    """The whole server-side run (see the module docstring); returns what it did and where it wrote it."""
    prepared = prepare_run(services, config, features=features, sleep=sleep, stop=stop, show_progress=show_progress)
    coordinator, prompts, report = prepared.coordinator, prepared.prompts, prepared.report
    audit, actor, out = services.audit, coordinator.actor, config.output_dir
    # -- 4. GRPO: from here a stop lets the step in flight finish (its round is out) -------------
    _interruptible(sleep, stop)(0.0)
    report.grpo, report.metrics_path = _grpo(coordinator, services, config, prompts, stop)
    if report.grpo.stopped_reason is not None:
        return report
    audit.record(actor, "training.finished", {"steps": len(report.grpo.steps), "adapter": str(report.grpo.adapter_path),
                                              "lora_delta_norm": report.grpo.lora_delta_norm,
                                              "router_digest": report.router_digest})
    (out / "training_report.json").write_text(json.dumps({
        "agents": report.agents, "calibration": report.calibration, "router_digest": report.router_digest,
        "router_fit": report.router_fit, "notes": report.notes, "adapter": str(report.grpo.adapter_path),
        "steps": len(report.grpo.steps)}, indent=2, default=str), "utf-8")
    return report


def _grpo(coordinator: RoundCoordinator, services: Services, config: TrainingSection, prompts: Sequence[Prompt],
          stop: StopCheck) -> tuple[GRPOResult, Path]:
    from server.federated_reward import FederatedReward

    reward = FederatedReward(coordinator, prompts, step_log=config.output_dir / "rounds.jsonl")

    def audit_step(record: dict[str, Any]) -> None:
        services.audit.record(coordinator.actor, "grpo.step", {
            k: record[k] for k in ("step", "reward", "reward_std", "kl", "agents_answered", "round_skipped")
            if k in record})

    return train_policy(config, prompts, reward, stop, on_step=audit_step)


def train_policy(config: TrainingSection, prompts: Sequence[Prompt], reward: RewardFn, stop: StopCheck, *,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 metrics: Path | None = None) -> tuple[GRPOResult, Path]:
    """GRPO on ``config``'s policy with ``reward``: what ``mor server run`` and every ``mor server train`` rank run.

    Each step's record goes to ``metrics`` (default ``output_dir/metrics.jsonl``) and to ``on_step``.
    """
    if not (config.model_path / "config.json").is_file():
        raise TrainingError(f"model_path {config.model_path}: not a model checkpoint folder (no config.json)")
    out = config.output_dir
    metrics = metrics or out / "metrics.jsonl"

    def step_logger(record: dict[str, Any]) -> None:
        with metrics.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        if on_step is not None:
            on_step(record)

    result = run_grpo(
        model_path=config.model_path, prompts=prompts, reward_fn=reward, step_logger=step_logger, stop=stop,
        config=GRPORunConfig(output_dir=out / "grpo", group_size=config.group_size, max_steps=config.max_steps,
                             per_device_batch=config.per_device_batch, beta=config.beta,
                             learning_rate=config.learning_rate, max_completion_length=config.max_completion_length,
                             use_lora=config.use_lora, seed=config.seed, dtype=config.dtype, device=config.device,
                             attn_implementation=config.attn_implementation,
                             lora_targets=config.lora_target_modules,
                             steps_per_generation=config.steps_per_generation,
                             overlap_scoring=config.overlap_scoring,
                             rounds_per_generation=config.rounds_per_generation),
    )
    return result, metrics
