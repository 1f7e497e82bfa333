"""Test-set statistics of SE gates, streamed: per-class sums, sums of squares and a histogram per block."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ressenet.errors import RessenetError

__all__ = ["GateAccumulator", "GateStats", "hist_quantiles", "CONSTANT_STD", "HIST_BINS", "QUANTILES"]

CONSTANT_STD = 0.02  # a block whose every channel's gate has an across-image std below this is "constant"
HIST_BINS = 10_000  # gate histogram over [0, 1]: quantiles to 1e-4
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


class GateAccumulator:
    """Streams (B, C) gates with their labels into per-class sums, sums of squares and a histogram.

    Sums are of ``gate - ref`` in float64, ``ref`` the first batch's per-channel mean, so a gate that is the same
    for every image gives variances of exactly zero.
    """

    def __init__(self, channels: int, num_classes: int, device: torch.device | str = "cpu",
                 bins: int = HIST_BINS) -> None:
        dev = torch.device(device)
        self.channels, self.num_classes, self.bins = channels, num_classes, bins
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=dev)
        self.sum = torch.zeros(num_classes, channels, dtype=torch.float64, device=dev)
        self.sumsq = torch.zeros(num_classes, channels, dtype=torch.float64, device=dev)
        self.hist = torch.zeros(bins, dtype=torch.float64, device=dev)
        self.lo = torch.full((), math.inf, dtype=torch.float64, device=dev)
        self.hi = torch.full((), -math.inf, dtype=torch.float64, device=dev)
        self.ref: Tensor | None = None

    def add(self, gate: Tensor, labels: Tensor) -> None:
        w = gate.detach().to(self.sum.device, torch.float64)
        y = labels.to(self.sum.device)
        if self.ref is None:
            self.ref = w.mean(0)
        d = w - self.ref
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sum.index_add_(0, y, d)
        self.sumsq.index_add_(0, y, d * d)
        self.hist += torch.histc(w.float(), bins=self.bins, min=0.0, max=1.0).double()
        self.lo = torch.minimum(self.lo, w.min())
        self.hi = torch.maximum(self.hi, w.max())

    def result(self) -> GateStats:
        if self.ref is None:
            raise RessenetError("no gates were recorded (an empty test set?)")
        count = self.count.cpu().numpy()
        ref = self.ref.cpu().numpy()
        s, ss = self.sum.cpu().numpy(), self.sumsq.cpu().numpy()
        present = count > 0
        n = count[present][:, None]
        cls_mean_d = s[present] / n
        within = np.maximum(ss[present] / n - cls_mean_d ** 2, 0.0)  # (K', C), population variance
        total = count.sum()
        mean_d = s.sum(0) / total
        var = np.maximum(ss.sum(0) / total - mean_d ** 2, 0.0)
        class_mean = np.full((self.num_classes, self.channels), np.nan)
        class_mean[present] = cls_mean_d + ref
        return GateStats(n_images=int(total), class_counts=count.astype(int), class_mean=class_mean,
                         mean=mean_d + ref, std=np.sqrt(var), within=within.mean(0),
                         between=cls_mean_d.var(0) if present.sum() > 1 else np.zeros(self.channels),
                         hist=self.hist.cpu().numpy(), lo=float(self.lo), hi=float(self.hi))


@dataclass
class GateStats:
    """Test-set statistics of one SE block's gate. Per-channel arrays have shape (C,).

    ``between``: variance across classes of the class-mean gate (classes weighted equally); ``within``: mean over
    classes of the within-class variance; ``std``: across-image std over the whole test set.
    """

    n_images: int
    class_counts: np.ndarray  # (K,)
    class_mean: np.ndarray  # (K, C); NaN rows for classes absent from the test set
    mean: np.ndarray
    std: np.ndarray
    within: np.ndarray
    between: np.ndarray
    hist: np.ndarray  # (HIST_BINS,) counts over [0, 1]
    lo: float
    hi: float

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> list[float]:
        return hist_quantiles(self.hist, qs, self.lo, self.hi)

    @property
    def between_block(self) -> float:
        return float(self.between.mean())

    @property
    def within_block(self) -> float:
        return float(self.within.mean())

    @property
    def ratio(self) -> float:
        """Selectivity: mean across-class variance over mean within-class variance (0 when the gate never moves)."""
        b, w = self.between_block, self.within_block
        if b <= 0.0:
            return 0.0
        return b / w if w > 0 else math.inf

    @property
    def eta2(self) -> float:
        """Share of the gate's variance that the class explains, between / (between + within), in [0, 1]."""
        b, w = self.between_block, self.within_block
        return b / (b + w) if b + w > 0 else 0.0

    @property
    def std_mean(self) -> float:
        return float(self.std.mean())

    @property
    def std_max(self) -> float:
        return float(self.std.max())

    def constant(self, threshold: float = CONSTANT_STD) -> bool:
        """No channel's gate has an across-image std of ``threshold`` or more."""
        return self.std_max < threshold


def hist_quantiles(hist: np.ndarray, qs: Sequence[float], lo: float, hi: float) -> list[float]:
    """Quantiles of values binned uniformly over [0, 1] (linear within a bin), clipped to the exact [lo, hi]."""
    total = float(hist.sum())
    if total <= 0:
        return [math.nan] * len(qs)
    edges = np.linspace(0.0, 1.0, len(hist) + 1)
    cum = np.concatenate([[0.0], np.cumsum(hist)]) / total
    out = []
    for q in qs:
        if q <= 0:
            out.append(lo)
        elif q >= 1:
            out.append(hi)
        else:
            i = int(np.searchsorted(cum, q, side="left"))
            i = min(max(i, 1), len(hist))
            c0, c1 = cum[i - 1], cum[i]
            frac = (q - c0) / (c1 - c0) if c1 > c0 else 0.0
            out.append(float(min(max(edges[i - 1] + frac * (edges[i] - edges[i - 1]), lo), hi)))
    return out

