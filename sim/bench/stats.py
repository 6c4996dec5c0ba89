"""Paired measurement: every figure is a ratio to a baseline timed in the same repeat.

Why paired: on a shared 2-core machine the absolute speed drifts by tens of percent within a
minute. Timing the baseline and the treatment back to back inside each repeat and taking the
ratio *per repeat* cancels most of that drift; the median over repeats is the figure, and the
min..max of the per-repeat ratios is its spread (with 3-5 repeats an inter-quartile range
would be a fiction).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One row of the report: ``value`` (treatment) against ``baseline``, and their ratio."""

    section: str
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    ratio: float
    ratio_min: float
    ratio_max: float
    repeats: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section, "name": self.name, "unit": self.unit, "value": self.value,
            "baseline_name": self.baseline_name, "baseline": self.baseline, "ratio": self.ratio,
            "ratio_min": self.ratio_min, "ratio_max": self.ratio_max, "repeats": self.repeats, "extra": self.extra,
        }


def paired(section: str, name: str, unit: str, values: Sequence[float], baseline_name: str,
           baselines: Sequence[float], **extra: Any) -> Figure:
    """Summarise paired samples: medians of both and the median/min/max of ``values[i] / baselines[i]``.

    >>> f = paired("2", "x", "s", [2.0, 4.0, 3.0], "b", [1.0, 2.0, 1.0])
    >>> (f.value, f.baseline, f.ratio, f.ratio_min, f.ratio_max)
    (3.0, 1.0, 2.0, 2.0, 3.0)
    """
    if not values or len(values) != len(baselines):
        raise ValueError(f"{section}/{name}: {len(values)} values for {len(baselines)} baselines")
    ratios = [v / b for v, b in zip(values, baselines, strict=True) if b > 0]
    if not ratios:
        raise ValueError(f"{section}/{name}: every baseline sample is 0, no ratio can be formed")
    return Figure(section, name, unit, float(statistics.median(values)), baseline_name,
                  float(statistics.median(baselines)), float(statistics.median(ratios)), float(min(ratios)),
                  float(max(ratios)), len(ratios), dict(extra))


def timed(fn: Callable[[], Any], *, number: int = 1) -> float:
    """Seconds per call of ``fn`` (``number`` calls, GC paused so a collection is not charged to it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number
    finally:
        if enabled:
            gc.enable()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty sample.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99)
    10.0
    >>> percentile([3, 1, 2], 50)
    2.0
    """
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class SectionResult:
    """What one section hands to the report: figures, notes, and named equality checks."""

    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
