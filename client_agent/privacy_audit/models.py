"""The models an audit trains, and the scores it asks them for.

* **DP**: exactly ``mor client train``'s training (:func:`client_agent.local_model.train_configured`:
  the configured architecture and parameters, Opacus DP-SGD to the config's (ε, δ) within the
  policy maximum, the same epochs, batch size, clipping and noise source) — only the data differ
  (the private pairs plus this model's canaries). What is audited is the member's real recipe.
* **Non-private contrast**: the same architecture, optimiser, learning rate, batch size and
  epochs, without clipping or noise — what the member's data would leak with no DP, measured by
  the same attacks on the same canaries.

Neither model is saved: they exist to be attacked and are dropped with the process, so an audit
never replaces the member's deployed model or its signed privacy report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from client_agent.config import AgentConfig
from client_agent.errors import PrivacyAuditError
from client_agent.rewards.base import RewardModel
from corpus.types import PreferencePair


@dataclass(frozen=True)
class Trained:
    """A trained audit model and what its training reported."""

    model: RewardModel
    info: dict[str, Any]


def train_dp(config: AgentConfig, pairs: Sequence[PreferencePair], *, index: int, progress: bool) -> Trained:
    """``mor client train``'s DP training on ``pairs`` (a pilot's fixed seed is offset per model)."""
    from client_agent.local_model import train_configured

    if config.training.seed is not None:  # a pilot's seed would give every shadow the same noise
        config = config.model_copy(update={"training": config.training.model_copy(
            update={"seed": config.training.seed + index})})
    model, result = train_configured(config, pairs, progress=progress)
    return Trained(model, {"epsilon": result.epsilon, "delta": result.delta,
                           "noise_multiplier": result.noise_multiplier, "sample_rate": result.sample_rate,
                           "steps": result.steps, "pairs": result.dataset_size,
                           "noise_source": result.noise_source, "final_loss": result.epoch_losses[-1],
                           "seconds": result.seconds})


def train_plain(config: AgentConfig, pairs: Sequence[PreferencePair], *, epochs: int, progress: bool) -> Trained:
    """The same architecture and optimiser as the DP training, with no clipping and no noise."""
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm import tqdm

    from client_agent.local_model import build_reward_model
    from client_agent.rewards.base import BradleyTerryLoss

    started = time.monotonic()
    model = build_reward_model(config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.training.lr)
    criterion = BradleyTerryLoss()
    with torch.no_grad():
        tensors = model.featurize(pairs)
    loader = DataLoader(TensorDataset(*tensors), batch_size=min(config.training.batch_size, len(pairs)), shuffle=True)
    model.train()
    loss_value = float("nan")
    with tqdm(total=epochs * len(loader), desc=f"non-private training {model.arch}",
              disable=None if progress else True) as bar:
        for epoch in range(1, epochs + 1):
            losses = []
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(*batch))
                loss.backward()
                optimizer.step()
                losses.append(float(loss.item()))
                bar.update(1)
            loss_value = sum(losses) / len(losses)
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}")
    model.eval()
    return Trained(model, {"epochs": epochs, "pairs": len(pairs), "final_loss": loss_value,
                           "seconds": time.monotonic() - started})


def canary_margins(model: RewardModel, canaries: Sequence[PreferencePair], *, batch_size: int) -> np.ndarray:
    """``score(chosen) − score(rejected)`` per canary, each answer scored on its own as a scoring task does."""
    images = [p.prompt.image for p in canaries]
    questions = [p.prompt.question for p in canaries]
    scores = []
    for answers in ([p.chosen for p in canaries], [p.rejected for p in canaries]):
        parts = [model.score(images[i:i + batch_size], questions[i:i + batch_size], answers[i:i + batch_size])
                 for i in range(0, len(canaries), batch_size)]
        scores.append(np.concatenate([part.numpy().astype(float) for part in parts]))
    margins = scores[0] - scores[1]
    if not np.isfinite(margins).all():
        raise PrivacyAuditError(f"the {model.arch} model scored a canary as NaN or infinite: cannot audit it")
    return np.asarray(margins)
