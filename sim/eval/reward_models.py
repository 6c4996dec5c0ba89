"""The reward models the methods compare: each client's own (under DP) and the pooled ceiling.

Client models are trained exactly as a client agent trains them — :func:`client_agent.dp.train_private`
to a real (ε, δ), one DP sample per pair — with per-architecture recipes (the ones the DP tests
show learn under ε = 8). The harness seeds them for reproducibility, which needs the *insecure
pilot* RNG: that is recorded in every result (``dp_rng``), as the DP entry point demands.

The centralised model is the ceiling no consortium can build: all clients' pairs pooled in one
place, no DP, the frozen-encoder head architecture.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from client_agent.dp import InsecurePilotWarning, PrivacyBudget, PrivateTrainingResult, train_private
from client_agent.rewards import BradleyTerryLoss, FrozenMLPReward, LoraMiniLMReward, RewardModel, TinyVLTReward
from corpus.types import PreferencePair

DP_RNG = "insecure_pilot (seeded for reproducibility; not a cryptographic RNG)"
DP_RNG_SECURE = "secure (CSPRNG noise, unseeded: production DP, as members run it)"


@dataclass(frozen=True)
class Recipe:
    """How one architecture is trained under DP: Adam learning rate, epochs, expected batch, clipping."""

    learning_rate: float
    epochs: int
    batch_size: int
    clipping: str = "flat"
    max_grad_norm: float = 1.0


RECIPES: dict[str, Recipe] = {
    "frozen-mlp": Recipe(0.05, 20, 200, clipping="ghost"),
    "tiny-vlt": Recipe(0.006, 8, 300),
    "lora-minilm": Recipe(0.02, 4, 150),
}


def build_model(arch: str, seed: int) -> RewardModel:
    """A fresh, untrained reward model of ``arch`` (same sizes as the client agent uses)."""
    if arch == "frozen-mlp":
        return FrozenMLPReward(hidden=128, seed=seed)
    if arch == "tiny-vlt":
        return TinyVLTReward(seed=seed)
    if arch == "lora-minilm":
        return LoraMiniLMReward.from_pretrained(num_layers=2, max_len=48, seed=seed)
    raise ValueError(f"unknown reward-model architecture {arch!r}")


def train_client_model(arch: str, pairs: Sequence[PreferencePair], *, budget: PrivacyBudget, seed: int,
                       epoch_factor: float = 1.0, progress: bool = True, secure: bool = False
                       ) -> tuple[RewardModel, PrivateTrainingResult]:
    """One client's reward model, trained in place under DP-SGD to exactly ``budget``.

    ``secure``: CSPRNG noise and no seed, exactly as a member runs it (``seed`` then only
    initialises the weights); otherwise the seeded insecure pilot, for reproducibility.
    """
    recipe = RECIPES[arch]
    model = build_model(arch, seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePilotWarning)  # recorded as DP_RNG in every result instead
        result = train_private(
            model=model, optimizer=optimizer, train_pairs=pairs, budget=budget, max_budget=budget,
            epochs=max(1, round(recipe.epochs * epoch_factor)), batch_size=min(recipe.batch_size, len(pairs)),
            max_grad_norm=recipe.max_grad_norm, clipping=recipe.clipping,  # type: ignore[arg-type]
            secure_mode=secure, insecure_pilot=not secure, seed=None if secure else seed, progress=progress,
        )
    return model, result


def train_central(pairs: Sequence[PreferencePair], *, seed: int, epochs: int, batch_size: int = 64,
                  learning_rate: float = 3e-3, progress: bool = True) -> tuple[RewardModel, dict[str, Any]]:
    """The non-private ceiling: a frozen-encoder head on every client's pairs pooled, plain Adam."""
    model = build_model("frozen-mlp", seed)
    tensors = model.featurize(pairs)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    criterion = BradleyTerryLoss()
    gen = torch.Generator().manual_seed(seed)
    n = len(pairs)
    losses: list[float] = []
    model.train()
    for _ in tqdm(range(epochs), desc="central RM (no DP)", disable=None if progress else True, leave=False):
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            loss = criterion(model(*(t[idx] for t in tensors)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        losses.append(total / n)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"central reward model: loss became {losses[-1]}")
    model.eval()
    return model, {"pairs": n, "epochs": epochs, "final_loss": losses[-1], "private": False}
