"""The "parameters" baseline MoR replaces: FedAvg of one shared reward-model architecture under DP.

Every client trains the SAME architecture (the frozen-encoder head, the only one all members
could agree to share) on its own pairs for a few local epochs of DP-SGD; the server averages
the parameters weighted by data size and sends the average back; several rounds.

Privacy accounting is per client over the whole run: each client keeps ONE Opacus engine for
all rounds, created with ``make_private_with_epsilon(epochs = rounds x local_epochs)``, so the
noise is chosen for the total number of steps it will take and the accountant composes every
local step of every round (PRV). The server's average is post-processing of DP outputs and
costs nothing more. Each client's ε is re-checked by the independent accountant of
:mod:`client_agent.dp.accounting`. Local Adam state is reset every round (the client starts
each round from the global model, as in FedAvg).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from client_agent.dp import PrivacyBudget, check_epsilon
from client_agent.rewards import BradleyTerryLoss, RewardModel
from corpus.types import PreferencePair
from sim.errors import EvalRunError
from sim.eval.reward_models import RECIPES, build_model

ARCH = "frozen-mlp"
_KNOWN_NOISE = ("Secure RNG turned off", "Optimal order is the largest alpha", "Full backward hook is firing")


@dataclass(frozen=True)
class FedAvgConfig:
    """Rounds x local epochs of DP-SGD per client, then a data-size-weighted average."""

    rounds: int = 5
    local_epochs: int = 3
    budget: PrivacyBudget = field(default_factory=lambda: PrivacyBudget(8.0, 1e-5))
    learning_rate: float = RECIPES[ARCH].learning_rate
    batch_size: int = RECIPES[ARCH].batch_size
    max_grad_norm: float = RECIPES[ARCH].max_grad_norm

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise EvalRunError(f"FedAvgConfig: rounds, local_epochs and batch_size must be >= 1 ({self})")


@dataclass
class FedAvgResult:
    """The global model and, per client, the (ε, δ) spent and its independent re-check."""

    model: RewardModel
    epsilons: dict[str, float]
    epsilons_independent: dict[str, float]
    noise_multipliers: dict[str, float]
    round_losses: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        return {"arch": ARCH, "epsilons": self.epsilons, "epsilons_independent": self.epsilons_independent,
                "noise_multipliers": self.noise_multipliers, "round_losses": self.round_losses}


@dataclass
class _Client:
    model: RewardModel
    private_model: Any
    optimizer: Any
    loader: Any
    engine: Any
    n: int


def _make_client(pairs: Sequence[PreferencePair], global_state: Mapping[str, torch.Tensor], config: FedAvgConfig,
                 seed: int) -> _Client:
    from opacus import PrivacyEngine

    model = build_model(ARCH, seed)
    model.load_state_dict(dict(global_state))
    tensors = model.featurize(pairs)
    loader = DataLoader(TensorDataset(*tensors), batch_size=min(config.batch_size, len(pairs)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    engine = PrivacyEngine(accountant="prv", secure_mode=False)
    model.train()
    private_model, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader, target_epsilon=config.budget.epsilon,
        target_delta=config.budget.delta, epochs=config.rounds * config.local_epochs,
        max_grad_norm=config.max_grad_norm, poisson_sampling=True,
    )
    return _Client(model, private_model, dp_optimizer, dp_loader, engine, len(pairs))


def _local_round(client: _Client, epochs: int, criterion: BradleyTerryLoss) -> float:
    client.optimizer.state.clear()  # each round starts afresh from the global model
    losses = []
    for _ in range(epochs):
        for batch in client.loader:
            if batch[0].shape[0] == 0:  # Poisson drew nobody: skip the step but charge it
                client.engine.accountant.step(noise_multiplier=client.optimizer.noise_multiplier,
                                              sample_rate=1.0 / len(client.loader))
                continue
            client.optimizer.zero_grad(set_to_none=True)
            loss = criterion(client.private_model(*batch))
            loss.backward()
            client.optimizer.step()
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


def _average(states: Sequence[Mapping[str, torch.Tensor]], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    total = float(sum(sizes))
    out: dict[str, torch.Tensor] = {}
    for name, first in states[0].items():
        mean = torch.zeros_like(first, dtype=torch.float64)
        for state, n in zip(states, sizes, strict=True):
            mean += state[name].detach().double() * (n / total)
        if not torch.isfinite(mean).all():
            raise EvalRunError(f"FedAvg: averaged parameter {name} is not finite")
        out[name] = mean.to(first.dtype)
    return out


def train_fedavg(client_pairs: Mapping[str, Sequence[PreferencePair]], config: FedAvgConfig, *, seed: int,
                 progress: bool = True) -> FedAvgResult:
    """Run FedAvg over ``client_pairs`` (client name -> its private pairs); return the global model."""
    if len(client_pairs) < 2:
        raise EvalRunError("FedAvg needs at least two clients")
    global_model = build_model(ARCH, seed)
    criterion = BradleyTerryLoss()
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(), warnings.catch_warnings():
        for message in _KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=message)
        torch.manual_seed(seed)
        state = {k: v.clone() for k, v in global_model.state_dict().items()}
        clients = {name: _make_client(pairs, state, config, seed) for name, pairs in client_pairs.items()}
        try:
            for _ in tqdm(range(config.rounds), desc="FedAvg rounds", disable=None if progress else True, leave=False):
                losses = {}
                for name, client in clients.items():
                    client.model.load_state_dict(state)
                    losses[name] = _local_round(client, config.local_epochs, criterion)
                state = _average([c.model.state_dict() for c in clients.values()], [c.n for c in clients.values()])
                history.append(losses)
        finally:
            for client in clients.values():
                client.private_model.to_standard_module()
    global_model.load_state_dict(state)
    global_model.eval()
    delta = config.budget.delta
    epsilons = {name: float(c.engine.get_epsilon(delta)) for name, c in clients.items()}
    for name, eps in epsilons.items():
        if eps > config.budget.epsilon * 1.01:
            raise EvalRunError(f"FedAvg client {name!r}: spent epsilon {eps:.3f} exceeds {config.budget.epsilon}")
    independent = {name: check_epsilon(epsilons[name], [(float(s), float(q), int(k)) for s, q, k in
                                                          c.engine.accountant.history], delta)
                   for name, c in clients.items()}
    noise = {name: float(c.optimizer.noise_multiplier) for name, c in clients.items()}
    return FedAvgResult(global_model, epsilons, independent, noise, history)
