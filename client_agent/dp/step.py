"""The DP-SGD step a member runs: how a model is wrapped, and one step — shared with ``mor bench``.

:func:`privatise` wraps model, optimizer and data loader the way every training does
(:func:`client_agent.dp.train_private` calls it), and :meth:`PrivateParts.step` is the body of the
training loop. Section 3 of ``mor bench`` times these very two (:mod:`sim.bench.dp_step`), so the
cost it reports is the cost members pay: the clipping mode their architecture gets, noise and
Poisson sampling from the OS CSPRNG (:mod:`client_agent.dp.secure_engine`).

Clipping modes — all three are *flat per-pair* clipping to ``max_grad_norm``: the same
sensitivity, the same noise, the same accountant and ε. They differ only in how each pair's
gradient norm is computed:

* ``flat``: Opacus hooks materialise every pair's gradient (memory: pairs x trainable
  parameters), then clip and sum. Works for every layer Opacus knows.
* ``ghost``: Opacus ghost clipping computes each pair's norm from the layer's inputs and output
  gradients without materialising per-pair gradients, then a second backward pass sums the
  clipped gradients. Opacus 1.6 supports it only where every trainable layer runs once per
  forward (a model that loops over the two answers reuses its layers: "parameter tying") and
  every ``nn.Linear`` sees inputs of at most 3 dimensions (its norm sampler returns nothing for
  more, which :meth:`PrivateParts.step` turns into an error rather than a stale norm).
* ``bk``: ghost norms and the clipped sum from one backward pass (book-keeping,
  :mod:`client_agent.dp.bookkeeping`), for models whose trainable layers are all ``nn.Linear``,
  each run once per forward. Opacus's ghost optimizer and accountant, without its second pass.
* ``auto`` (the default): the architecture's own choice, :attr:`RewardModel.dp_clipping` —
  ``bk`` where it applies (``frozen-mlp``: wide layers on two positions per pair), ``flat``
  elsewhere. Measured per architecture in ``docs/benchmarks.md`` (section 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from client_agent.dp.bookkeeping import BookKeepingClipper
from client_agent.dp.secure_engine import CsprngPrivacyEngine, check_secure_pipeline, poisson_loader
from client_agent.errors import InvalidPrivacyParametersError
from client_agent.rewards.base import BradleyTerryLoss, RewardModel

_PER_PAIR = BradleyTerryLoss(reduction="none")
CLIPPING = ("auto", "flat", "ghost", "bk")
Clipping = Literal["auto", "flat", "ghost", "bk"]
Mode = Literal["flat", "ghost", "bk"]
_MODES: tuple[Mode, ...] = ("flat", "ghost", "bk")


def resolve_clipping(model: torch.nn.Module, clipping: str) -> Mode:
    """The mode that will run: ``clipping`` itself, or for ``auto`` the architecture's choice."""
    if clipping not in CLIPPING:
        raise InvalidPrivacyParametersError(f"clipping={clipping!r}; expected one of {CLIPPING}")
    chosen = getattr(model, "dp_clipping", "flat") if clipping == "auto" else clipping
    for mode in _MODES:
        if chosen == mode:
            return mode
    raise InvalidPrivacyParametersError(f"{type(model).__name__}.dp_clipping={chosen!r}; expected one of {_MODES}")


@dataclass
class PrivateParts:
    """What Opacus returned for one training: the wrapped model, optimizer, loss and loader."""

    engine: PrivacyEngine
    module: Any  # opacus GradSampleModule (hooks) or GradSampleModuleFastGradientClipping (ghost)
    optimizer: Any  # opacus DPOptimizer (a CSPRNG-noise subclass unless a pilot)
    criterion: Any  # BradleyTerryLoss, or Opacus's per-pair loss wrapper under ghost clipping
    loader: DataLoader
    clipping: Mode
    secure: bool
    clipper: BookKeepingClipper | None = None

    def step(self, batch: Sequence[torch.Tensor]) -> float:
        """One DP-SGD step on a non-empty batch of pairs; returns the batch's mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.clipper is not None:
            try:
                per_pair = _PER_PAIR(self.module(*batch))
                self.clipper.backward(per_pair)
            finally:
                self.clipper.discard()
            self.optimizer.step()
            return float(per_pair.detach().mean())
        if self.clipping == "ghost":
            # Opacus keeps each parameter's per-pair norm from the last backward pass; a layer whose
            # norm is not recomputed (see the module doc) must fail, never clip with last step's norms.
            for p in self.module.trainable_parameters:
                p.__dict__.pop("_norm_sample", None)
        loss = self.criterion(self.module(*batch))
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def release(self) -> None:
        """Remove Opacus's hooks (and ours) from the model and drop the last gradients."""
        if self.clipper is not None:
            self.clipper.remove()
        self.module.to_standard_module()
        self.optimizer.zero_grad(set_to_none=True)


def privatise(*, model: RewardModel, optimizer: torch.optim.Optimizer, loader: DataLoader, secure: bool,
              accountant: str, clipping: str, max_grad_norm: float, noise: Mapping[str, Any]) -> PrivateParts:
    """Wrap for DP-SGD exactly as training does; ``noise`` is either the budget
    (``target_epsilon``, ``target_delta``, ``epochs``: Opacus calibrates the noise multiplier) or
    a fixed ``noise_multiplier``.

    ``secure``: Gaussian noise and Poisson sampling from the OS CSPRNG (the loader is replaced by a
    CSPRNG Poisson loader at Opacus's rate); otherwise Opacus's seedable PRNG (pilots only).
    """
    mode = resolve_clipping(model, clipping)
    if not ("target_epsilon" in noise or "noise_multiplier" in noise):
        raise InvalidPrivacyParametersError("noise: give target_epsilon/target_delta/epochs or noise_multiplier")
    clipper = BookKeepingClipper(model, max_grad_norm) if mode == "bk" else None  # refuses a non-Linear model
    try:
        engine: PrivacyEngine
        if secure:  # Opacus keeps a loader it is given with poisson_sampling=False: ours samples
            engine = CsprngPrivacyEngine(accountant=accountant)
            loader = poisson_loader(loader, engine.noise_stream)
        else:
            engine = PrivacyEngine(accountant=accountant, secure_mode=False)
        criterion = BradleyTerryLoss()
        model.train()
        common: dict[str, Any] = dict(
            module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, max_grad_norm=max_grad_norm,
            poisson_sampling=not secure, clipping="flat", grad_sample_mode="hooks" if mode == "flat" else "ghost")
        if "target_epsilon" in noise:
            wrapped = engine.make_private_with_epsilon(**common, target_epsilon=noise["target_epsilon"],
                                                       target_delta=noise["target_delta"], epochs=noise["epochs"])
        else:
            wrapped = engine.make_private(**common, noise_multiplier=noise["noise_multiplier"])
        if mode == "flat":
            (private_model, dp_optimizer, dp_loader), dp_criterion = wrapped, criterion
        else:
            private_model, dp_optimizer, dp_criterion, dp_loader = wrapped
        if clipper is not None:
            # Opacus's ghost optimizer and accountant stay; its norm hooks go (the clipper computes the norms)
            private_model.remove_hooks()
        if secure:
            check_secure_pipeline(dp_optimizer, dp_loader)
            private_model.forbid_grad_accumulation()  # what poisson_sampling=True would have set
    except BaseException:
        if clipper is not None:
            clipper.remove()
        raise
    return PrivateParts(engine, private_model, dp_optimizer, dp_criterion, dp_loader, mode, secure, clipper)
