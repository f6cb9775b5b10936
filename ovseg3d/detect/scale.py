"""The scene's scale, metres per scene unit, from the sizes of its objects against the size prior.

Poses from COLMAP (or any structure from motion) are in arbitrary units; the size prior is in metres. Each
object of a class with a prior votes for the scale that makes it its class's size: the median over its three
sides (longer, shorter, height) of ``log(prior / measured)``, the scale at which its prior factor
``exp(-mean |log ratio|)`` is highest. The votes' consensus, the window of ``+-window`` (log units) about one
vote that holds the most votes (ties: the window nearer scale 1), keeps the objects that agree; the estimate is
the median of those objects' side ratios in log, the scale that maximises the product of their prior factors.
A fragment, a mislabelled blob or an odd-sized object falls outside the window and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ovseg3d.detect.priors import SizePriors

CONSENSUS_WINDOW = math.log(2.0)
"""Votes within a factor of 2 of the consensus agree with it (a class's sizes vary by tens of percent)."""


@dataclass
class SceneScale:
    """``metres_per_unit``: how many metres one unit of the scene is; ``source``: ``"given"`` (``--scale``),
    ``"estimated"`` (from ``objects`` agreeing objects, ``outliers`` more left out) or ``"default"`` (1.0:
    nothing to estimate from)."""

    metres_per_unit: float
    source: str
    objects: int = 0
    outliers: int = 0

    def describe(self) -> str:
        if self.source == "estimated":
            out = f"estimated from {self.objects} object{'s' * (self.objects != 1)}"
            return out + (f" ({self.outliers} outlier{'s' * (self.outliers != 1)} left out)" if self.outliers else "")
        if self.source == "default":
            return "default: no object of a class with a size prior to estimate from (--scale to give it)"
        return self.source

    def to_json(self) -> dict:
        return {"scale": round(self.metres_per_unit, 9), "scale_from": self.describe()}


def side_log_ratios(priors: SizePriors, names: Sequence[str], sizes: Sequence[np.ndarray]) -> np.ndarray:
    """``[K, 3]`` ``log(prior / measured)`` of (longer side, shorter side, height) of each object whose class has
    a prior (the others are left out; a side measured 0 counts as 1e-12)."""
    rows = []
    for name, size in zip(names, sizes, strict=True):
        r = priors.ratios(name, np.maximum(np.asarray(size, np.float64), 1e-12))
        if r is not None:
            rows.append(-np.log(r))
    return np.array(rows).reshape(-1, 3)


def consensus(votes: np.ndarray, window: float = CONSENSUS_WINDOW) -> np.ndarray:
    """``[K]`` bool: the votes (log scales) within ``window`` of the vote whose window holds the most of them;
    ties go to the window nearer 0 (scale 1)."""
    near = np.abs(votes[:, None] - votes[None]) <= window
    support = near.sum(1)
    best = np.flatnonzero(support == support.max())
    return near[best[int(np.argmin(np.abs(votes[best])))]]


def estimate_scale(
    priors: SizePriors, names: Sequence[str], sizes: Sequence[np.ndarray], window: float = CONSENSUS_WINDOW
) -> SceneScale:
    """Metres per scene unit from objects of classes ``names`` measured ``sizes`` (L, W, H in scene units); 1.0
    (``"default"``) when no object has a prior."""
    logs = side_log_ratios(priors, names, sizes)
    if len(logs) == 0:
        return SceneScale(1.0, "default")
    agree = consensus(np.median(logs, axis=1), window)
    scale = math.exp(float(np.median(logs[agree])))
    return SceneScale(scale, "estimated", int(agree.sum()), int((~agree).sum()))
