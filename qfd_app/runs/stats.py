"""Means and 95 % confidence intervals over seeds, for tables that say how sure
they are.

Seeds are few (three in docs/results.md), so the interval is Student's t over the
values: mean ± t(1 − α/2, n − 1) · s/√n. Strategies of one comparison run on the same
seeds, so they are compared *paired*: per seed the ratio (or difference) of a strategy's
value to the reference strategy's, then the interval over those per-seed numbers, which
cancels what a seed does to both (its devices, partitions and channels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its confidence interval [`low`, `high`]
    (NaN where `n` < 2: one value gives no spread)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, fmt: str = ".3g", scale: float = 1.0) -> str:
        """`mean ± half-width` (`mean` alone for a single value), values × `scale`."""
        mean = format(scale * self.mean, fmt)
        if self.n < 2 or math.isnan(self.half_width):
            return mean
        return f"{mean} ± {format(scale * self.half_width, fmt)}"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of `values` and its Student-t confidence interval; NaN values are left
    out (a run that has no such score)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, len(x))
    t = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1))
    half = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))


def paired_ratio(
    values: Sequence[float],
    reference: Sequence[float],
    confidence: float = CONFIDENCE,
) -> Interval:
    """Per-pair ratios `values[i] / reference[i]` and the interval of their mean."""
    return mean_interval(
        [v / r if r else math.nan for v, r in _pairs(values, reference)], confidence
    )


def paired_difference(
    values: Sequence[float],
    reference: Sequence[float],
    confidence: float = CONFIDENCE,
) -> Interval:
    """Per-pair differences `values[i] − reference[i]` and the interval of their
    mean (a paired t interval)."""
    return mean_interval([v - r for v, r in _pairs(values, reference)], confidence)


def _pairs(values: Sequence[float], reference: Sequence[float]) -> list[tuple]:
    if len(values) != len(reference):
        raise ValueError(
            f"paired statistics need one value per seed on both sides; got "
            f"{len(values)} and {len(reference)}"
        )
    return list(zip(values, reference, strict=True))
