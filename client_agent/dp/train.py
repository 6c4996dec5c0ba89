"""The one entry point for differentially private reward-model training.

``train_private`` goes from (model, optimizer, preference pairs, budget, policy maximum) to a
trained model (in place) and a :class:`PrivateTrainingResult` holding everything the signed
privacy report needs. Decisions made here on purpose:

* **One DP sample = one preference pair.** The model sees ``[B, K=2, ...]`` tensors and the
  Bradley–Terry loss is per pair; pairs are never flattened into 2B rows.
* **Budget-driven.** ``PrivacyEngine.make_private_with_epsilon`` picks the noise multiplier
  for the requested (ε, δ), epochs and sampling rate; PRV accountant by default.
* **Refuse, don't warn,** when the budget exceeds the policy maximum or δ ≥ 1/N.
* **Secure by default, without torchcsprng.** Gaussian noise and Poisson sampling come from
  the OS CSPRNG through :mod:`client_agent.dp.secure_engine` (Opacus's own accountant and noise
  calibration, our DPOptimizer subclass and batch sampler). Only a pilot
  (``insecure_pilot=True``, the one way to pass ``seed``) uses Opacus's seedable PRNG, for
  reproducible experiments: it warns loudly and ``noise_source`` in the result says so.
* **The architecture's clipping mode** (``clipping="auto"``, :mod:`client_agent.dp.step`):
  one-pass book-keeping where every trained layer is an ``nn.Linear`` (``frozen-mlp``), per-pair
  gradients elsewhere — the same flat per-pair clipping either way, so the same noise and ε;
  only the cost differs.
* **Poisson sampling**; an (astronomically rare) empty batch is skipped but still charged to
  the accountant, so the reported ε stays an upper bound.
* **Guards**: parameters meant to train must move and stay finite after every epoch
  (Opacus + PEFT #820), and ε is recomputed with an independent accountant.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from client_agent.dp.accounting import check_epsilon, recompute_epsilon
from client_agent.dp.budget import PrivacyBudget, check_budget
from client_agent.dp.guards import ParameterGuard
from client_agent.dp.secure_engine import NOISE_SOURCE_PILOT, NOISE_SOURCE_SECURE
from client_agent.dp.step import CLIPPING, Clipping, privatise
from client_agent.errors import InvalidPrivacyParametersError, TrainingIntegrityError
from client_agent.rewards.base import RewardModel
from client_agent.rewards.opacus_check import check_privatizable
from corpus.types import PreferencePair

ACCOUNTANTS = ("prv", "rdp")
# Library warnings that say nothing actionable here: torch's note on hooks over inputs that need
# no grad (frozen features), Opacus' secure-RNG notice (our own InsecurePilotWarning is louder
# and is raised before this filter applies) and PRV's internal RDP bound on the domain size.
_KNOWN_NOISE = ("Full backward hook is firing", "Secure RNG turned off", "Optimal order is the largest alpha")


class InsecurePilotWarning(UserWarning):
    """DP training ran without a cryptographically secure RNG: results are for pilots only."""


@dataclass(frozen=True)
class PrivateTrainingResult:
    """What was spent and how; the privacy report is built from this."""

    arch: str
    epsilon: float
    epsilon_independent: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epochs: int
    dataset_size: int
    expected_batch_size: int
    max_grad_norm: float
    clipping: str
    secure_mode: bool
    insecure_pilot: bool
    history: tuple[tuple[float, float, int], ...]
    epoch_losses: tuple[float, ...]
    empty_batches: int
    seconds: float
    noise_source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_args(accountant: str, clipping: str, epochs: int, batch_size: int, max_grad_norm: float, n: int) -> None:
    if accountant not in ACCOUNTANTS:
        raise InvalidPrivacyParametersError(f"accountant={accountant!r}; expected one of {ACCOUNTANTS}")
    if clipping not in CLIPPING:
        raise InvalidPrivacyParametersError(f"clipping={clipping!r}; expected one of {CLIPPING}")
    if epochs < 1:
        raise InvalidPrivacyParametersError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= batch_size <= n:
        raise InvalidPrivacyParametersError(f"batch_size must be in [1, N={n}], got {batch_size}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise InvalidPrivacyParametersError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm}")


def _check_secure(secure_mode: bool, insecure_pilot: bool, seed: int | None) -> bool:
    """Resolve the RNG mode: True = noise and sampling from the OS CSPRNG, False = seeded pilot."""
    if insecure_pilot:
        warnings.warn(
            "INSECURE PILOT: DP noise and sampling use a seedable, non-cryptographic RNG (reproducible experiments). "
            "The privacy guarantee does not hold against an adversary who can predict the RNG; "
            "do not use on production data. This is recorded in the privacy report.",
            InsecurePilotWarning,
            stacklevel=3,
        )
        return False
    if not secure_mode:
        raise InvalidPrivacyParametersError("secure_mode=False is only allowed together with insecure_pilot=True")
    if seed is not None:
        raise InvalidPrivacyParametersError("seed= makes DP noise predictable; only allowed with insecure_pilot=True")
    return True  # noise and sampling from the OS CSPRNG (client_agent.dp.secure_engine)


def _check_optimizer(model: RewardModel, optimizer: torch.optim.Optimizer) -> None:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
    if missing:
        raise InvalidPrivacyParametersError(
            f"optimizer does not hold {len(missing)} trainable parameter(s), e.g. {missing[0]}"
        )


def train_private(
    *,
    model: RewardModel,
    optimizer: torch.optim.Optimizer,
    train_pairs: Sequence[PreferencePair],
    budget: PrivacyBudget,
    max_budget: PrivacyBudget,
    epochs: int,
    batch_size: int,
    max_grad_norm: float,
    accountant: Literal["prv", "rdp"] = "prv",
    secure_mode: bool = True,
    insecure_pilot: bool = False,
    clipping: Clipping = "auto",
    seed: int | None = None,
    progress: bool = True,
    approve: Callable[[float, float, int], None] | None = None,
) -> PrivateTrainingResult:
    """Train ``model`` in place with DP-SGD to exactly ``budget``; refuse anything unsound.

    ``approve(noise_multiplier, sample_rate, planned_steps)`` is called once Opacus has calibrated
    the noise and before the first step; it raises to refuse the run (the lifetime budget check).
    """
    n = len(train_pairs)
    check_budget(budget, max_budget, n)
    _check_args(accountant, clipping, epochs, batch_size, max_grad_norm, n)
    use_secure = _check_secure(secure_mode, insecure_pilot, seed)
    if importlib.util.find_spec("prv_accountant") is None:  # fail before training, not after it
        raise InvalidPrivacyParametersError(
            "the independent epsilon check needs the 'prv-accountant' package (pip install prv-accountant)"
        )
    _check_optimizer(model, optimizer)
    check_privatizable(model)  # names the layer Opacus cannot handle, before any work is done
    guard = ParameterGuard(model, model.trainable_parameter_names())

    started = time.monotonic()
    with torch.random.fork_rng(), warnings.catch_warnings():
        for message in _KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=message)
        if seed is not None:
            torch.manual_seed(seed)
        tensors = model.featurize(train_pairs)
        loader = DataLoader(TensorDataset(*tensors), batch_size=batch_size)
        parts = privatise(model=model, optimizer=optimizer, loader=loader, secure=use_secure, accountant=accountant,
                          clipping=clipping, max_grad_norm=max_grad_norm,
                          noise={"target_epsilon": budget.epsilon, "target_delta": budget.delta, "epochs": epochs})
        engine, dp_optimizer, dp_loader = parts.engine, parts.optimizer, parts.loader
        if approve is not None:
            approve(float(dp_optimizer.noise_multiplier), 1.0 / len(dp_loader), epochs * len(dp_loader))
        sample_rate = 1.0 / len(loader)
        epoch_losses: list[float] = []
        empty = 0
        try:
            with tqdm(total=epochs * len(dp_loader), desc=f"DP training {model.arch}",
                      disable=None if progress else True) as bar:
                for epoch in range(1, epochs + 1):
                    losses: list[float] = []
                    for batch in dp_loader:
                        bar.update(1)
                        if batch[0].shape[0] == 0:  # Poisson drew nobody: skip, but charge the step
                            empty += 1
                            engine.accountant.step(noise_multiplier=dp_optimizer.noise_multiplier,
                                                   sample_rate=sample_rate)
                            continue
                        losses.append(parts.step(batch))
                    guard.check(epoch)
                    epoch_losses.append(sum(losses) / max(len(losses), 1))
                    bar.set_postfix(epoch=epoch, loss=f"{epoch_losses[-1]:.4f}")
        finally:
            parts.release()
        model.eval()

    history = tuple((float(s), float(q), int(k)) for s, q, k in engine.accountant.history)
    epsilon = float(engine.get_epsilon(budget.delta))
    if epsilon > budget.epsilon * 1.01:
        raise TrainingIntegrityError(f"spent epsilon {epsilon:.4f} exceeds the requested {budget.epsilon}")
    if accountant == "prv":
        independent = check_epsilon(epsilon, history, budget.delta)
    else:  # RDP is a looser upper bound than PRV: the independent value must not exceed it
        independent = recompute_epsilon(history, budget.delta)
        if independent > epsilon * 1.01:
            raise TrainingIntegrityError(f"RDP epsilon {epsilon:.4f} below independent PRV {independent:.4f}")
    return PrivateTrainingResult(
        arch=model.arch, epsilon=epsilon, epsilon_independent=independent, delta=budget.delta,
        accountant=accountant, noise_multiplier=float(dp_optimizer.noise_multiplier), sample_rate=sample_rate,
        steps=sum(k for _, _, k in history), epochs=epochs, dataset_size=n,
        expected_batch_size=int(dp_optimizer.expected_batch_size or 0), max_grad_norm=float(max_grad_norm),
        clipping=parts.clipping, secure_mode=use_secure, insecure_pilot=insecure_pilot, history=history,
        epoch_losses=tuple(epoch_losses), empty_batches=empty, seconds=time.monotonic() - started,
        noise_source=NOISE_SOURCE_SECURE if use_secure else NOISE_SOURCE_PILOT,
    )
