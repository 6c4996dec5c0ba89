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

from client_agent.dp import PrivacyBudget
from corpus.styles import STYLES
from sim.errors import EvalRunError
from sim.eval.cells import CellStore, Progress
from sim.eval.config import EvalConfig
from sim.eval.data import EvalData, build_data
from sim.eval.fedavg import FedAvgConfig, train_fedavg
from sim.eval.methods import SeedContext, methods_for
from sim.eval.metrics import answer_accuracy, mean_std, win_outcomes
from sim.eval.on_policy import on_policy_pairs
from sim.eval.policy import ScorerReward, align, greedy_answers, prepare_reference
from sim.eval.reward_models import DP_RNG, DP_RNG_SECURE, train_central, train_client_model
from sim.eval.scoring import CalibratedModel, PromptFeatures, Scorer, scorer_pair_accuracy
from sim.eval.summary import differences

Echo = Callable[[str], None]


METHODS = methods_for(EvalConfig())
CELL_KEYS = ("win_own", "win_all", "accuracy", "accuracy_all", "pair_accuracy", "weights_used", "grpo", "samples",
             "outcomes")


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
    # method -> client -> per-prompt outcome (1 / 0.5 / 0) on the client's own domain: what the bootstrap resamples
    outcomes: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    routers: dict[str, Any] = field(default_factory=dict)  # every router fit and the online refinement


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
        for scorer in [m for m in self.methods if m in self.seeds[0].pair_accuracy]:
            out["pair_accuracy"][scorer] = {c: list(mean_std([s.pair_accuracy[scorer][c] for s in self.seeds]))
                                            for c in clients}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "methods": list(self.methods), "data_sizes": self.data_sizes,
                "reference_path": self.reference_path, "wall_seconds": self.wall_seconds, "dp_rng": self.dp_rng,
                "summary": self.summary(), "differences": differences(self), "seeds": [asdict(s) for s in self.seeds]}


PROMPT_FEATURES = PromptFeatures()  # frozen encoders: one cache for the whole process


def _train_members(config: EvalConfig, data: EvalData, seed: int, record: dict[str, Any], progress: bool,
                   echo: Echo) -> list[CalibratedModel]:
    budget = PrivacyBudget(config.epsilon, config.delta)
    members: list[CalibratedModel] = []
    for spec in config.clients:
        started = time.perf_counter()
        model, dp = train_client_model(spec.arch, data.client_pairs[spec.name], budget=budget, seed=seed,
                                       epoch_factor=config.rm_epoch_factor, progress=progress,
                                       secure=config.secure_dp)
        members.append(CalibratedModel.calibrate(spec.name, model, data.calibration))
        record["privacy"][spec.name] = {"arch": spec.arch, "epsilon": dp.epsilon, "delta": dp.delta,
                                        "epsilon_independent": dp.epsilon_independent, "epochs": dp.epochs,
                                        "noise_multiplier": dp.noise_multiplier, "secure": config.secure_dp}
        record["seconds"][f"rm:{spec.name}"] = time.perf_counter() - started
        echo(f"seed {seed}: {spec.name} reward model ({spec.arch}) eps={dp.epsilon:.2f} "
             f"in {record['seconds'][f'rm:{spec.name}']:.0f}s")
    return members


def _baselines(config: EvalConfig, data: EvalData, seed: int, record: dict[str, Any], progress: bool
               ) -> Callable[[str], Scorer]:
    """FedAvg and the central ceiling, each trained on first use (a resumed run may need neither)."""
    built: dict[str, Scorer] = {}

    def get(method: str) -> Scorer:
        if method not in built:
            started = time.perf_counter()
            if method == "fedavg":
                budget = PrivacyBudget(config.epsilon, config.delta)
                fed = train_fedavg(data.client_pairs, FedAvgConfig(rounds=config.fedavg_rounds,
                                                                   local_epochs=config.fedavg_local_epochs,
                                                                   budget=budget), seed=seed, progress=progress)
                record["privacy"]["fedavg"] = fed.summary()
                model = fed.model
            else:
                pooled = [pair for pairs in data.client_pairs.values() for pair in pairs]
                model, record["privacy"]["central"] = train_central(pooled, seed=seed, epochs=config.central_epochs,
                                                                    progress=progress)
            built[method] = CalibratedModel.calibrate(method, model, data.calibration)
            record["seconds"][f"rm:{method}"] = time.perf_counter() - started
        return built[method]

    return get


def _policy_metrics(config: EvalConfig, data: EvalData, answers: list[str], reference: list[str]) -> dict[str, Any]:
    prompts = data.eval_prompts
    cell: dict[str, Any] = {"win_own": {}, "win_all": {}, "outcomes": {}}
    for spec in config.clients:
        rule = STYLES[spec.style]
        own = [i for i, p in enumerate(prompts) if p.domain in rule.domains]
        every = win_outcomes(rule, prompts, answers, reference)
        cell["outcomes"][spec.name] = [every[i] for i in own]
        cell["win_all"][spec.name] = sum(every) / len(every)
        cell["win_own"][spec.name] = sum(every[i] for i in own) / len(own) if own else 0.5
    general = [i for i, p in enumerate(prompts) if p.domain == "general"]
    cell["accuracy"] = answer_accuracy([prompts[i] for i in general], [answers[i] for i in general])
    cell["accuracy_all"] = answer_accuracy(prompts, answers)
    firsts = {p.domain: i for i, p in reversed(list(enumerate(prompts)))}
    cell["samples"] = [answers[i] for i in sorted(firsts.values())]
    return cell


def _mean_weights(rows: list[tuple[str, list[float]]], agents: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for domain in sorted({d for d, _ in rows}):
        picked = torch.tensor([w for d, w in rows if d == domain])
        out[domain] = dict(zip(agents, picked.mean(0).tolist(), strict=True))
    return out


def _grpo_cell(config: EvalConfig, data: EvalData, ctx: SeedContext, method: str, reference_path: Path,
               reference_answers: list[str], work_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    scorer = ctx.scorer(method)
    pair_accuracy = {c.name: scorer_pair_accuracy(scorer, data.test_pairs[c.name]) for c in config.clients}
    reward = ScorerReward(scorer, data.train_prompts)
    run = align(reference_path, data.train_prompts, reward, out_dir=work_dir / f"grpo-{ctx.seed}-{method}",
                steps=config.grpo_steps, group_size=config.group_size, per_device_batch=config.per_device_batch,
                learning_rate=config.learning_rate, beta=config.beta,
                max_completion_length=config.max_completion_length, seed=ctx.seed)
    answers = greedy_answers(reference_path, data.eval_prompts, adapter=run.adapter_path)
    cell = _policy_metrics(config, data, answers, reference_answers)
    rewards = [float(s["reward"]) for s in run.steps if "reward" in s]
    cell["pair_accuracy"] = pair_accuracy
    cell["grpo"] = {"lora_delta_norm": run.lora_delta_norm, "first_reward": rewards[0] if rewards else 0.0,
                    "last_reward": rewards[-1] if rewards else 0.0,
                    "kl_last": float(run.steps[-1].get("kl", 0.0)) if run.steps else 0.0}
    cell["weights_used"] = (_mean_weights(reward.used_weights, [c.name for c in config.clients])
                            if reward.used_weights else None)
    cell["seconds"] = time.perf_counter() - started
    return cell


def run_seed(config: EvalConfig, data: EvalData, reference_path: Path, reference_answers: list[str], seed: int,
             work_dir: Path, store: CellStore, progress_bar: Progress, *, progress: bool = True,
             echo: Echo = lambda _: None) -> SeedResult:
    """Every unfinished (method, seed) cell of one seed, each saved as it finishes; then the seed's result."""
    methods = methods_for(config)
    record: dict[str, Any] = store.load(seed, "_seed") if store.has(seed, "_seed") else {}
    record.setdefault("privacy", {})
    record.setdefault("seconds", {})
    record.setdefault("routers", {})
    todo = [m for m in methods if not store.has(seed, m)]
    for method in methods:
        if method not in todo:
            progress_bar.skipped(f"seed {seed} {method}")
    if "reference" in todo:
        store.save(seed, "reference", _policy_metrics(config, data, reference_answers, reference_answers))
        progress_bar.finished(f"seed {seed} reference", timed=False)
    todo = [m for m in todo if m != "reference"]
    if todo:
        members = _train_members(config, data, seed, record, progress, echo)
        public_prompts = list({p.prompt.prompt_id: p.prompt for p in data.public_pairs}.values())
        ctx = SeedContext(config, data, seed, members, PROMPT_FEATURES,
                          baselines=_baselines(config, data, seed, record, progress),
                          on_policy_pairs=lambda: on_policy_pairs(
                              reference_path, public_prompts[: config.online_prompts], samples=config.online_samples,
                              seed=seed, max_new_tokens=config.max_completion_length),
                          progress=progress)
        for method in todo:
            try:
                cell = _grpo_cell(config, data, ctx, method, reference_path, reference_answers, work_dir)
            except (RuntimeError, ValueError) as exc:
                raise EvalRunError(f"seed {seed}, method {method}: {type(exc).__name__}: {exc}") from exc
            store.save(seed, method, cell)
            record["routers"].update(ctx.info)
            store.save(seed, "_seed", record)
            mean = sum(cell["win_own"].values()) / len(cell["win_own"])
            progress_bar.finished(f"seed {seed} {method}", f"mean own-domain win {mean:.3f}")
    return _assemble(seed, methods, store, record)


def _assemble(seed: int, methods: tuple[str, ...], store: CellStore, record: dict[str, Any]) -> SeedResult:
    result = SeedResult(seed=seed, privacy=record.get("privacy", {}), routers=record.get("routers", {}),
                        seconds=dict(record.get("seconds", {})))
    result.router_fit = result.routers.get("fit:mor", {})
    for method in methods:
        cell = store.load(seed, method)
        for key in CELL_KEYS:
            if cell.get(key) is not None:
                getattr(result, key)[method] = cell[key]
        if "seconds" in cell:
            result.seconds[f"grpo:{method}"] = cell["seconds"]
    return result


def run_eval(config: EvalConfig, out_dir: Path, *, progress: bool = True, echo: Echo = lambda _: None,
             clock: Callable[[], float] = time.perf_counter) -> EvalResult:
    """The whole experiment, resumable: cells under ``out_dir/cells``, work files under ``out_dir/work``."""
    started = clock()
    work_dir = Path(out_dir) / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    store = CellStore(Path(out_dir), config.fingerprint())
    data = build_data(config)
    reference_path = prepare_reference(work_dir, n_sft=config.n_sft, steps=config.warm_start_steps,
                                       progress=progress,
                                       model_path=Path(config.model_path) if config.model_path else None)
    reference_answers = greedy_answers(reference_path, data.eval_prompts)
    echo(f"reference ready in {clock() - started:.0f}s: {reference_path}")
    bar = Progress(len(config.seeds) * len(methods_for(config)), echo, clock)
    seeds = [run_seed(config, data, reference_path, reference_answers, seed, work_dir, store, bar,
                      progress=progress, echo=echo) for seed in config.seeds]
    return EvalResult(config=config, methods=methods_for(config), data_sizes=data.sizes(),
                      reference_path=str(reference_path), seeds=seeds, wall_seconds=clock() - started,
                      dp_rng=DP_RNG_SECURE if config.secure_dp else DP_RNG)
