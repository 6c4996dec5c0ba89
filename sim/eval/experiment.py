"""Does Mixture-of-Rewards help? The experiment of issue #5 §2, in process, top to bottom.

Per seed (the data is fixed, see :mod:`sim.eval.config`):

1. each client trains its own reward model, of its own architecture, under DP to (ε, δ);
2. every model is z-calibrated on the public calibration batch;
3. the learned router is fitted on the public labelled pairs (Bradley–Terry of the fused reward);
4. the FedAvg model (one shared architecture, DP, several rounds) and the centralised,
   non-private model on the pooled pairs are trained as baselines;
5. each method runs GRPO from the SAME warm-started reference with the SAME budget and seed,
   and answers the held-out prompts greedily; win rates are taken under each client's hidden
   true rule against the reference's answers.

Methods, in table order: :data:`METHODS`. Everything measured lands in :class:`EvalResult`;
:mod:`sim.eval.report` turns it into the markdown table, JSON and plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from client_agent.dp import PrivacyBudget
from corpus.styles import STYLES
from server.router import LearnedRouter, RouterFitConfig, RouterTrainingSet, UniformRouter
from sim.eval.config import EvalConfig
from sim.eval.data import EvalData, build_data
from sim.eval.fedavg import FedAvgConfig, train_fedavg
from sim.eval.metrics import answer_accuracy, mean_std, win_rate
from sim.eval.policy import ScorerReward, align, greedy_answers, prepare_reference
from sim.eval.reward_models import DP_RNG, train_central, train_client_model
from sim.eval.scoring import CalibratedModel, Mixture, PromptFeatures, Scorer, scorer_pair_accuracy

Echo = Callable[[str], None]


def methods_for(config: EvalConfig) -> tuple[str, ...]:
    """Table rows: the reference, one GRPO run per single client, then the fused rewards."""
    return ("reference", *(f"single:{c.name}" for c in config.clients), "uniform", "fedavg", "mor", "central")


METHODS = methods_for(EvalConfig())


@dataclass
class SeedResult:
    """Every number one seed produced (JSON-able via ``asdict``)."""

    seed: int
    win_own: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> client -> own-domain win rate
    win_all: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> client -> all-prompts win rate
    accuracy: dict[str, float] = field(default_factory=dict)  # method -> easy-vqa accuracy
    accuracy_all: dict[str, float] = field(default_factory=dict)  # method -> accuracy on every held-out prompt
    pair_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # scorer -> client -> accuracy
    router_fit: dict[str, Any] = field(default_factory=dict)
    weights_used: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # mixture -> domain -> w
    privacy: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    config: EvalConfig
    methods: tuple[str, ...]
    data_sizes: dict[str, Any]
    reference_path: str
    seeds: list[SeedResult]
    wall_seconds: float
    dp_rng: str = DP_RNG

    def summary(self) -> dict[str, Any]:
        """``metric -> method -> [mean, std]`` over seeds (and per client where the metric is per client)."""
        clients = [c.name for c in self.config.clients]
        out: dict[str, Any] = {"win_own": {}, "win_all": {}, "win_own_mean": {}, "accuracy": {},
                               "accuracy_all": {}, "pair_accuracy": {}}
        for m in self.methods:
            for key in ("win_own", "win_all"):
                out[key][m] = {c: list(mean_std([getattr(s, key)[m][c] for s in self.seeds])) for c in clients}
            out["win_own_mean"][m] = list(mean_std([sum(s.win_own[m].values()) / len(clients) for s in self.seeds]))
            out["accuracy"][m] = list(mean_std([s.accuracy[m] for s in self.seeds]))
            out["accuracy_all"][m] = list(mean_std([s.accuracy_all[m] for s in self.seeds]))
        for scorer in self.seeds[0].pair_accuracy:
            out["pair_accuracy"][scorer] = {c: list(mean_std([s.pair_accuracy[scorer][c] for s in self.seeds]))
                                            for c in clients}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "methods": list(self.methods), "data_sizes": self.data_sizes,
                "reference_path": self.reference_path, "wall_seconds": self.wall_seconds, "dp_rng": self.dp_rng,
                "summary": self.summary(), "seeds": [asdict(s) for s in self.seeds]}


PROMPT_FEATURES = PromptFeatures()  # frozen encoders: one cache for the whole process


def _router_set(members: list[CalibratedModel], data: EvalData) -> RouterTrainingSet:
    prompts = [p.prompt for p in data.public_pairs]
    chosen = torch.stack([m.score(prompts, [p.chosen for p in data.public_pairs]) for m in members], dim=1)
    rejected = torch.stack([m.score(prompts, [p.rejected for p in data.public_pairs]) for m in members], dim=1)
    return RouterTrainingSet(agents=tuple(m.name for m in members), features=PROMPT_FEATURES(prompts),
                             chosen=chosen.float(), rejected=rejected.float(), mask=torch.ones_like(chosen).bool(),
                             domains=tuple(p.domain for p in prompts), groups=tuple(p.prompt_id for p in prompts))



def _scorers(config: EvalConfig, data: EvalData, seed: int, result: SeedResult, progress: bool,
             echo: Echo) -> dict[str, Scorer]:
    budget = PrivacyBudget(config.epsilon, config.delta)
    members: list[CalibratedModel] = []
    for spec in config.clients:
        started = time.perf_counter()
        model, dp = train_client_model(spec.arch, data.client_pairs[spec.name], budget=budget, seed=seed,
                                       epoch_factor=config.rm_epoch_factor, progress=progress)
        members.append(CalibratedModel.calibrate(spec.name, model, data.calibration))
        result.privacy[spec.name] = {"arch": spec.arch, "epsilon": dp.epsilon, "delta": dp.delta,
                                     "epsilon_independent": dp.epsilon_independent, "epochs": dp.epochs,
                                     "noise_multiplier": dp.noise_multiplier}
        result.seconds[f"rm:{spec.name}"] = time.perf_counter() - started
        echo(f"seed {seed}: {spec.name} reward model ({spec.arch}) eps={dp.epsilon:.2f} "
             f"in {result.seconds[f'rm:{spec.name}']:.0f}s")
    started = time.perf_counter()
    router = LearnedRouter([m.name for m in members], seed=seed)
    fit = router.fit(_router_set(members, data), RouterFitConfig(max_epochs=config.router_epochs, seed=seed,
                                                                   show_progress=progress))
    result.router_fit = fit.to_dict()
    fed = train_fedavg(data.client_pairs, FedAvgConfig(rounds=config.fedavg_rounds,
                                                       local_epochs=config.fedavg_local_epochs, budget=budget),
                       seed=seed, progress=progress)
    result.privacy["fedavg"] = fed.summary()
    pooled = [pair for pairs in data.client_pairs.values() for pair in pairs]
    central, central_info = train_central(pooled, seed=seed, epochs=config.central_epochs, progress=progress)
    result.privacy["central"] = central_info
    result.seconds["baselines"] = time.perf_counter() - started
    echo(f"seed {seed}: router val acc {fit.val_accuracy:.3f} (uniform {fit.val_accuracy_uniform:.3f}); "
         f"FedAvg and central models in {result.seconds['baselines']:.0f}s")
    scorers: dict[str, Scorer] = {f"single:{m.name}": m for m in members}
    scorers["uniform"] = Mixture("uniform", members, UniformRouter([m.name for m in members]), PROMPT_FEATURES)
    scorers["fedavg"] = CalibratedModel.calibrate("fedavg", fed.model, data.calibration)
    scorers["mor"] = Mixture("mor", members, router, PROMPT_FEATURES)
    scorers["central"] = CalibratedModel.calibrate("central", central, data.calibration)
    return scorers


def _policy_metrics(config: EvalConfig, data: EvalData, method: str, answers: list[str], reference: list[str],
                    result: SeedResult) -> None:
    prompts = data.eval_prompts
    result.win_own[method], result.win_all[method] = {}, {}
    for spec in config.clients:
        rule = STYLES[spec.style]
        own = [i for i, p in enumerate(prompts) if p.domain in rule.domains]
        result.win_all[method][spec.name] = win_rate(rule, prompts, answers, reference)
        result.win_own[method][spec.name] = win_rate(rule, [prompts[i] for i in own], [answers[i] for i in own],
                                                     [reference[i] for i in own])
    general = [i for i, p in enumerate(prompts) if p.domain == "general"]
    result.accuracy[method] = answer_accuracy([prompts[i] for i in general], [answers[i] for i in general])
    result.accuracy_all[method] = answer_accuracy(prompts, answers)
    firsts = {p.domain: i for i, p in reversed(list(enumerate(prompts)))}
    result.samples[method] = [answers[i] for i in sorted(firsts.values())]


def _mean_weights(rows: list[tuple[str, list[float]]], agents: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for domain in sorted({d for d, _ in rows}):
        picked = torch.tensor([w for d, w in rows if d == domain])
        out[domain] = dict(zip(agents, picked.mean(0).tolist(), strict=True))
    return out


def run_seed(config: EvalConfig, data: EvalData, reference_path: Path, reference_answers: list[str], seed: int,
             work_dir: Path, *, progress: bool = True, echo: Echo = lambda _: None) -> SeedResult:
    """Train every reward, run every method's GRPO, measure; one seed."""
    result = SeedResult(seed=seed)
    scorers = _scorers(config, data, seed, result, progress, echo)
    for name, scorer in scorers.items():
        result.pair_accuracy[name] = {c.name: scorer_pair_accuracy(scorer, data.test_pairs[c.name])
                                      for c in config.clients}
    _policy_metrics(config, data, "reference", reference_answers, reference_answers, result)
    for name in tqdm(list(scorers), desc=f"GRPO runs (seed {seed})", disable=None if progress else True):
        started = time.perf_counter()
        reward = ScorerReward(scorers[name], data.train_prompts)
        run = align(reference_path, data.train_prompts, reward, out_dir=work_dir / f"grpo-{seed}-{name}",
                    steps=config.grpo_steps, group_size=config.group_size, per_device_batch=config.per_device_batch,
                    learning_rate=config.learning_rate, beta=config.beta,
                    max_completion_length=config.max_completion_length, seed=seed)
        answers = greedy_answers(reference_path, data.eval_prompts, adapter=run.adapter_path)
        _policy_metrics(config, data, name, answers, reference_answers, result)
        rewards = [float(s["reward"]) for s in run.steps if "reward" in s]
        result.grpo[name] = {"lora_delta_norm": run.lora_delta_norm, "first_reward": rewards[0] if rewards else 0.0,
                             "last_reward": rewards[-1] if rewards else 0.0,
                             "kl_last": float(run.steps[-1].get("kl", 0.0)) if run.steps else 0.0}
        if reward.used_weights:
            result.weights_used[name] = _mean_weights(reward.used_weights, [c.name for c in config.clients])
        result.seconds[f"grpo:{name}"] = time.perf_counter() - started
        echo(f"seed {seed}: {name}: own-domain win rates {result.win_own[name]} "
             f"({result.seconds[f'grpo:{name}']:.0f}s)")
    return result


def run_eval(config: EvalConfig, out_dir: Path, *, progress: bool = True, echo: Echo = lambda _: None,
             clock: Callable[[], float] = time.perf_counter) -> EvalResult:
    """The whole experiment; work files (model, adapters) go under ``out_dir/work``."""
    started = clock()
    work_dir = Path(out_dir) / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(config)
    reference_path = prepare_reference(work_dir, n_sft=config.n_sft, steps=config.warm_start_steps,
                                       progress=progress)
    reference_answers = greedy_answers(reference_path, data.eval_prompts)
    echo(f"reference ready in {clock() - started:.0f}s: {reference_path}")
    seeds = [run_seed(config, data, reference_path, reference_answers, seed, work_dir, progress=progress, echo=echo)
             for seed in config.seeds]
    return EvalResult(config=config, methods=methods_for(config), data_sizes=data.sizes(),
                      reference_path=str(reference_path), seeds=seeds, wall_seconds=clock() - started)
