"""DP-SGD with noise and sampling from :mod:`client_agent.dp.secure_noise`, through Opacus's own seams.

Opacus is not patched. Two things Opacus exposes are used instead:

* **A DPOptimizer subclass.** ``add_noise`` is the method Opacus's own optimizer variants
  override; ours draws the Gaussian from :class:`CsprngStream`. :class:`CsprngPrivacyEngine`
  is a :class:`opacus.PrivacyEngine` whose ``_prepare_optimizer`` builds that subclass instead
  of the stock one (same arguments, same class choice via ``get_optimizer_class``), so model
  wrapping, ghost clipping, the accountant hook and ``make_private_with_epsilon``'s noise
  calibration are Opacus's, unchanged. ``_prepare_optimizer`` is a protected method: if a
  future Opacus stops calling it, :func:`check_secure_pipeline` refuses to train.
* **A batch sampler passed in.** :func:`poisson_loader` turns the plain loader into one whose
  batches come from :class:`CsprngPoissonBatchSampler` with Opacus's sample rate
  (``1 / len(loader)``) and step count (``len(loader)``), and Opacus's empty-batch collate.
  ``make_private_with_epsilon(poisson_sampling=False)`` then leaves it as it is. The
  accountant therefore sees exactly what stock Poisson sampling would give it: ε is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping, get_optimizer_class
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from client_agent.dp.secure_noise import GAUSSIAN_DRAWS, CsprngStream
from client_agent.errors import InvalidPrivacyParametersError, TrainingIntegrityError

# What the privacy report, results and audit logs record as the noise source.
NOISE_SOURCE_SECURE = f"{CsprngStream.name} gaussian-sum-of-{GAUSSIAN_DRAWS} (Holohan-Braghin 2021)"
NOISE_SOURCE_PILOT = "INSECURE seeded torch PRNG (pilot only)"


def _add_csprng_noise(optimizer: Any, stream: CsprngStream) -> None:
    """Opacus's ``add_noise`` with the Gaussian drawn from ``stream``: ``p.grad = p.summed_grad + noise``.

    The noise is added chunk by chunk into the summed gradient itself
    (:meth:`CsprngStream.add_gaussian_`), so a step never holds the float64 draws of all
    parameters at once, nor a second parameter-sized buffer: Opacus discards ``summed_grad`` after
    the step (``zero_grad``), and it is marked processed so it is never noised twice.
    """
    multiplier = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier)
    std = float(multiplier) * float(optimizer.max_grad_norm)
    params = list(optimizer.params)
    for p in params:
        _check_processed_flag(p.summed_grad)
    for p in params:
        summed = p.summed_grad
        p.grad = stream.add_gaussian_(summed if summed.is_contiguous() else summed.contiguous(), std).view_as(p)
        _mark_as_processed(summed)


class _CsprngNoise:
    """Mixin for an Opacus optimizer class: same clipping and accounting, CSPRNG Gaussian noise."""

    def __init__(self, *args: Any, noise_stream: CsprngStream, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noise_stream = noise_stream

    def add_noise(self) -> None:
        _add_csprng_noise(self, self.noise_stream)


class CsprngDPOptimizer(_CsprngNoise, DPOptimizer):
    """Opacus's DPOptimizer (flat clipping, per-sample hooks) with CSPRNG Gaussian noise."""


class CsprngDPOptimizerFastGradientClipping(_CsprngNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer with CSPRNG Gaussian noise."""


_SECURE_CLASSES: dict[type, type] = {
    DPOptimizer: CsprngDPOptimizer,
    DPOptimizerFastGradientClipping: CsprngDPOptimizerFastGradientClipping,
}


class CsprngPrivacyEngine(PrivacyEngine):
    """A PrivacyEngine whose optimizers draw noise from :class:`CsprngStream` (see the module doc)."""

    def __init__(self, *, accountant: str = "prv", stream: CsprngStream | None = None) -> None:
        super().__init__(accountant=accountant, secure_mode=False)  # secure_mode would need torchcsprng
        self.noise_stream = stream or CsprngStream()

    def _prepare_optimizer(self, *, optimizer: torch.optim.Optimizer, noise_multiplier: float,
                           max_grad_norm: float | list[float], expected_batch_size: int,
                           loss_reduction: str = "mean", distributed: bool = False, clipping: str = "flat",
                           noise_generator: Any = None, grad_sample_mode: str = "hooks",
                           **kwargs: Any) -> DPOptimizer:
        if distributed or noise_generator is not None:
            raise InvalidPrivacyParametersError("CSPRNG noise supports single-process training without a generator")
        base = get_optimizer_class(clipping=clipping, distributed=False, grad_sample_mode=grad_sample_mode)
        secure = _SECURE_CLASSES.get(base)
        if secure is None:
            raise InvalidPrivacyParametersError(f"no CSPRNG noise for Opacus optimizer {base.__name__}")
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        result: DPOptimizer = secure(optimizer=optimizer, noise_multiplier=noise_multiplier,
                                     max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
                                     loss_reduction=loss_reduction, generator=None, secure_mode=False,
                                     noise_stream=self.noise_stream, **kwargs)
        return result


class CsprngPoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches per pass; each index joins each batch with probability ``sample_rate``."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, stream: CsprngStream) -> None:
        if num_samples < 1 or not 0 < sample_rate <= 1 or steps < 1:
            raise InvalidPrivacyParametersError(
                f"Poisson sampler needs N >= 1, 0 < q <= 1, steps >= 1 (got {num_samples}, {sample_rate}, {steps})")
        self.num_samples, self.sample_rate, self.steps, self.stream = num_samples, sample_rate, steps, stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.stream.poisson_subset(self.num_samples, self.sample_rate)


def poisson_loader(loader: DataLoader, stream: CsprngStream) -> DataLoader:
    """``loader``'s dataset behind CSPRNG Poisson sampling at Opacus's rate ``1 / len(loader)``."""
    dataset: Dataset = loader.dataset
    steps = len(loader)
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=default_collate,
                                      sample_empty_shapes=[(0, *getattr(x, "shape", ())) for x in first],
                                      dtypes=[getattr(x, "dtype", type(x)) for x in first])
    sampler = CsprngPoissonBatchSampler(len(dataset), 1.0 / steps, steps, stream)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


def check_secure_pipeline(optimizer: object, loader: DataLoader) -> None:
    """Refuse to train if Opacus did not take our optimizer or sampler (e.g. after an Opacus upgrade)."""
    if not isinstance(optimizer, CsprngDPOptimizer | CsprngDPOptimizerFastGradientClipping):
        raise TrainingIntegrityError(
            f"Opacus built {type(optimizer).__name__}, not the CSPRNG-noise optimizer: refusing to train")
    if not isinstance(loader.batch_sampler, CsprngPoissonBatchSampler):
        raise TrainingIntegrityError("the DP data loader is not the CSPRNG Poisson sampler: refusing to train")
