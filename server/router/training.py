"""Fitting a learned router: Bradley–Terry likelihood of the fused reward, plus an entropy term.

On N public, labelled preference pairs the server holds each agent's *calibrated* scores for
the chosen and the rejected answer. The fused reward of an answer is ``sum_k w_k(x) s_k``
with ``w(x)`` the router's weights for the pair's prompt x; the loss is

    -log sigmoid(scale * (fused_chosen - fused_rejected))  -  entropy_coef * H(w(x))

``scale`` (a learned positive temperature of the Bradley–Terry link) makes the loss a
calibrated likelihood whatever the score scale; it never enters the fused reward itself.
The entropy term keeps weights from collapsing onto one agent on little evidence. AdamW
gives weight decay; early stopping on the validation Bradley–Terry loss restores the best
epoch. Pairs are split into train/validation by ``groups`` (e.g. prompt id) when given, so
two pairs about one prompt never sit on both sides. Randomness comes only from ``seed``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from tqdm import tqdm

from server.errors import RouterConfigError, RouterInputError
from server.router.base import check_features


class TrainableRouter(Protocol):
    """What :func:`fit_router` needs: an ``nn.Module`` router with masked weights and a BT scale."""

    agents: tuple[str, ...]
    feature_dim: int

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...
    def bt_scale(self) -> torch.Tensor: ...
    def set_feature_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None: ...
    def parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class RouterTrainingSet:
    """Public labelled pairs as the router sees them: prompt features and per-agent scores.

    ``chosen``/``rejected`` are ``[N, A]`` calibrated scores in the column order of ``agents``;
    ``mask`` is ``[N, A]`` bool, False where an agent gave no score (its entries are ignored).
    ``domains`` (optional) feeds the report's mean weights per domain; ``groups`` (optional)
    keeps pairs of one prompt on one side of the train/validation split.
    """

    agents: tuple[str, ...]
    features: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    mask: torch.Tensor
    domains: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_features(self.features)
        n, a = self.features.shape[0], len(self.agents)
        if n < 2:
            raise RouterInputError(f"training set needs at least 2 pairs, got {n}")
        for name in ("chosen", "rejected", "mask"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.shape != (n, a):
                shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise RouterInputError(f"training set: {name} must be [{n}, {a}] (pairs x agents), got {shape}")
        if self.mask.dtype != torch.bool:
            raise RouterInputError(f"training set: mask must be bool, got {self.mask.dtype}")
        empty = (~self.mask.any(dim=1)).nonzero()
        if len(empty):
            raise RouterInputError(f"training set: pair {int(empty[0])} has no agent score at all")
        for name in ("chosen", "rejected"):
            if not bool(torch.isfinite(getattr(self, name)[self.mask]).all()):
                raise RouterInputError(f"training set: {name} has NaN/infinite scores where mask is True")
        for name in ("domains", "groups"):
            labels = getattr(self, name)
            if labels is not None and len(labels) != n:
                raise RouterInputError(f"training set: {name} has {len(labels)} labels for {n} pairs")


@dataclass(frozen=True)
class RouterFitConfig:
    """Settings of one router fit; invalid values are refused at construction."""

    max_epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 1e-2
    weight_decay: float = 1e-2
    entropy_coef: float = 1e-3
    val_fraction: float = 0.2
    patience: int = 30
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        positive = {"max_epochs": self.max_epochs, "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate, "patience": self.patience}
        for name, value in positive.items():
            if not value > 0:
                raise RouterConfigError(f"RouterFitConfig.{name} must be > 0, got {value!r}")
        for name, value in {"weight_decay": self.weight_decay, "entropy_coef": self.entropy_coef}.items():
            if not (math.isfinite(value) and value >= 0):
                raise RouterConfigError(f"RouterFitConfig.{name} must be finite and >= 0, got {value!r}")
        if not 0 < self.val_fraction < 1:
            raise RouterConfigError(f"RouterFitConfig.val_fraction must be in (0, 1), got {self.val_fraction!r}")


@dataclass(frozen=True)
class RouterFitReport:
    """What the fit achieved, on held-out pairs, against the baselines; JSON-able via ``to_dict``.

    Accuracies count a tie as half right. ``val_accuracy_by_agent`` scores each agent alone on
    the validation pairs it answered (None if it answered none). ``mean_weights_by_domain``
    averages the router's weights over all pairs of each domain (None without domain labels).
    """

    agents: tuple[str, ...]
    n_train: int
    n_val: int
    epochs_run: int
    best_epoch: int
    train_bt_loss: float
    val_bt_loss: float
    val_accuracy: float
    val_accuracy_uniform: float
    val_accuracy_by_agent: dict[str, float | None]
    val_mean_entropy: float
    mean_weights_by_domain: dict[str, dict[str, float]] | None
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agents"] = list(self.agents)
        return out


def _split(data: RouterTrainingSet, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    groups = data.groups if data.groups is not None else tuple(str(i) for i in range(len(data.features)))
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise RouterInputError("training set: need pairs from at least 2 groups to hold some out for validation")
    order = torch.randperm(len(unique), generator=gen).tolist()
    n_val = min(max(1, round(val_fraction * len(unique))), len(unique) - 1)
    val_groups = {unique[i] for i in order[:n_val]}
    is_val = torch.tensor([g in val_groups for g in groups])
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


def bt_margins(router: TrainableRouter, data: RouterTrainingSet, idx: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused chosen-minus-rejected margins and the weights used, for the pairs ``idx``."""
    w = router.masked_weights(data.features[idx], data.mask[idx])
    chosen = (w * data.chosen[idx].nan_to_num()).sum(1)
    rejected = (w * data.rejected[idx].nan_to_num()).sum(1)
    return chosen - rejected, w


def _entropy(w: torch.Tensor) -> torch.Tensor:
    return -(w * torch.log(w.clamp_min(1e-12))).sum(dim=1)


def _bt_loss(router: TrainableRouter, margin: torch.Tensor) -> torch.Tensor:
    return -torch.nn.functional.logsigmoid(router.bt_scale() * margin).mean()


def _accuracy(margin: torch.Tensor) -> float:
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean()) if len(margin) else float("nan")


def fit_router(router: TrainableRouter, data: RouterTrainingSet, config: RouterFitConfig) -> RouterFitReport:
    """Fit ``router`` in place on ``data`` and report held-out accuracy against the baselines."""
    if tuple(data.agents) != tuple(router.agents):
        raise RouterInputError(f"training set agents {list(data.agents)} differ from router agents "
                               f"{list(router.agents)} (same names, same order)")
    check_features(data.features, router.feature_dim)
    gen = torch.Generator().manual_seed(config.seed)
    train_idx, val_idx = _split(data, config.val_fraction, gen)

    # -- normalise features with train-split statistics (stored in the router) ------------------
    train_x = data.features[train_idx].float()
    router.set_feature_normalisation(train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6))

    # -- optimise: minibatch AdamW, early stopping on the validation BT loss ---------------------
    optimiser = torch.optim.AdamW(router.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    best = (math.inf, 0, copy.deepcopy(router.state_dict()))
    epoch = 0
    bar = tqdm(range(1, config.max_epochs + 1), desc="fit router", leave=False,
               disable=None if config.show_progress else True)
    for epoch in bar:
        router.train(True)
        for batch in train_idx[torch.randperm(len(train_idx), generator=gen)].split(config.batch_size):
            margin, w = bt_margins(router, data, batch)
            loss = _bt_loss(router, margin) - config.entropy_coef * _entropy(w).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        router.train(False)
        with torch.no_grad():
            val_loss = float(_bt_loss(router, bt_margins(router, data, val_idx)[0]))
        bar.set_postfix(val_bt_loss=f"{val_loss:.4f}")
        if val_loss < best[0] - 1e-6:
            best = (val_loss, epoch, copy.deepcopy(router.state_dict()))
        elif epoch - best[1] >= config.patience:
            break
    bar.close()
    router.load_state_dict(best[2])
    return _report(router, data, train_idx, val_idx, config, epochs_run=epoch, best_epoch=best[1])


def _report(router: TrainableRouter, data: RouterTrainingSet, train_idx: torch.Tensor, val_idx: torch.Tensor,
            config: RouterFitConfig, *, epochs_run: int, best_epoch: int) -> RouterFitReport:
    with torch.no_grad():
        train_margin, _ = bt_margins(router, data, train_idx)
        val_margin, val_w = bt_margins(router, data, val_idx)
        all_w = router.masked_weights(data.features, data.mask)
        present = data.mask[val_idx].double()
        uniform = present / present.sum(1, keepdim=True)
        diff = (data.chosen[val_idx] - data.rejected[val_idx]).double().nan_to_num()
        by_agent: dict[str, float | None] = {}
        for k, agent in enumerate(router.agents):
            rows = data.mask[val_idx, k]
            by_agent[agent] = _accuracy(diff[rows, k]) if bool(rows.any()) else None
        by_domain = None
        if data.domains is not None:
            by_domain = {d: dict(zip(router.agents, all_w[_rows(data.domains, d)].mean(0).tolist(), strict=True))
                         for d in sorted(set(data.domains))}
        return RouterFitReport(
            agents=tuple(router.agents), n_train=len(train_idx), n_val=len(val_idx),
            epochs_run=epochs_run, best_epoch=best_epoch,
            train_bt_loss=float(_bt_loss(router, train_margin)), val_bt_loss=float(_bt_loss(router, val_margin)),
            val_accuracy=_accuracy(val_margin), val_accuracy_uniform=_accuracy((uniform * diff).sum(1)),
            val_accuracy_by_agent=by_agent, val_mean_entropy=float(_entropy(val_w).mean()),
            mean_weights_by_domain=by_domain, config={k: v for k, v in asdict(config).items() if k != "show_progress"},
        )


def _rows(labels: Sequence[str], value: str) -> torch.Tensor:
    return torch.tensor([label == value for label in labels])
