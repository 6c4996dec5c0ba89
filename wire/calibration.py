"""One reward model's score scale, and the z-score that puts every member on one scale.

Reward models of different architectures and training runs live on different scales. Each is
summarised by the mean and (population) standard deviation of its scores on the public
calibration batch; a raw score ``s`` then becomes ``(s - mean) / std``. Agents measure it
(their self-report), the server measures it from the vectors it is sent, the evaluation
experiment measures it in-process — all with this one class, so the three cannot drift.

It lives beside the wire messages because it is exactly what travels in a
:class:`~wire.messages.CalibrationReport`, and both ends must agree on what it means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch

MIN_STD = 1e-9  # below this a model is constant on the batch: no scale can be recovered


class CalibrationError(ValueError):
    """A calibration that cannot put scores on a common scale (non-finite, or a constant model)."""


@dataclass(frozen=True)
class Calibration:
    """A score scale: ``mean`` and ``std`` > 0 (finite), over ``n`` scored items (0: unknown)."""

    mean: float
    std: float
    n: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise CalibrationError(f"calibration mean={self.mean}, std={self.std}: need finite mean and std > 0")

    @classmethod
    def measure(cls, scores: torch.Tensor | Sequence[float]) -> Calibration:
        """Mean and population standard deviation of ``scores``; refuses fewer than 2 or a constant batch."""
        values = torch.as_tensor(scores, dtype=torch.float64).detach().flatten()
        n = int(values.numel())
        if n < 2:
            raise CalibrationError(f"calibration needs at least 2 scored items, got {n}")
        mean, std = float(values.mean()), float(values.std(unbiased=False))
        if not (math.isfinite(mean) and math.isfinite(std)) or std <= MIN_STD:
            raise CalibrationError(f"calibration batch gives mean={mean}, std={std}: the reward model is constant or "
                                   "non-finite on it, so its scores cannot be put on a common scale")
        return cls(mean, std, n)

    @overload
    def zscore(self, scores: torch.Tensor) -> torch.Tensor: ...
    @overload
    def zscore(self, scores: float) -> float: ...

    def zscore(self, scores: torch.Tensor | float) -> torch.Tensor | float:
        """``(s - mean) / std``: a raw score (or a tensor of them, as float64) on the common scale."""
        if isinstance(scores, torch.Tensor):
            return (scores.to(torch.float64) - self.mean) / self.std
        return (float(scores) - self.mean) / self.std


MIN_STD_FRACTION = 1e-4  # a scale below this share of the policy's score range only amplifies noise


def calibration_refusal(mean: float, std: float, *, score_min: float, score_max: float) -> str | None:
    """Why a calibration cannot be used under the policy's score range (None: usable).

    A member's scale divides its scores, so an unbounded one lets a member multiply its
    influence at will (std 1e-100) or overflow the fusion (1e-300). Whoever measured it —
    the member itself or the server — it must be finite, its mean inside the score range, and
    its std between ``MIN_STD_FRACTION`` of the range and the whole range.
    """
    span = score_max - score_min
    if not (math.isfinite(mean) and math.isfinite(std)):
        return f"mean={mean}, std={std}: not finite"
    if not score_min <= mean <= score_max:
        return f"mean={mean} outside the policy's score range [{score_min}, {score_max}]"
    if not MIN_STD_FRACTION * span <= std <= span:
        return f"std={std} outside [{MIN_STD_FRACTION * span:.3g}, {span:.3g}] (the policy's score range)"
    return None


IDENTITY = Calibration(0.0, 1.0)  # an uncalibrated member: its raw scale is used as is

__all__ = ["IDENTITY", "MIN_STD", "MIN_STD_FRACTION", "Calibration", "CalibrationError", "calibration_refusal"]
