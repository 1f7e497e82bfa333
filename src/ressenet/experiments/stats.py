"""Statistics over seeds: mean ± sample std, and Welch's t-test with a confidence interval of the difference.

The paper reports single runs; seed-to-seed spread of CIFAR test accuracy is a few tenths of a point (He et al.:
ResNet-110 6.61 ± 0.16 % error over 5 runs), the size of many of its gaps. Welch's test does not assume equal
variances; its degrees of freedom come from the Welch–Satterthwaite equation.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["Summary", "Comparison", "summarize", "welch", "paired", "holm", "fmt_mean_std", "fmt_comparison",
           "fmt_num", "fmt_p"]


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float  # nan when n == 0
    std: float  # sample std (ddof=1); nan when n < 2


@dataclass(frozen=True)
class Comparison:
    """Mean of ``a`` minus mean of ``b``, its confidence interval and Welch's two-sided p-value."""

    n_a: int
    n_b: int
    diff: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    df: float = math.nan
    confidence: float = 0.95

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def summarize(values: Sequence[float]) -> Summary:
    """n, mean and sample standard deviation (ddof=1) of the finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Summary(0, math.nan, math.nan)
    return Summary(int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Welch's t-test of mean(a) − mean(b) with a ``confidence`` interval (Welch–Satterthwaite df).

    With fewer than two values in either group, or no spread at all, only the difference is given (CI and
    p-value are NaN): a test needs a variance estimate from both groups.
    """
    x = np.asarray([v for v in a if v is not None and math.isfinite(v)], dtype=float)
    y = np.asarray([v for v in b if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0 or y.size == 0:
        return Comparison(int(x.size), int(y.size), math.nan, confidence=confidence)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Comparison(int(x.size), int(y.size), diff, confidence=confidence)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se <= 1e-9 * max(1.0, abs(float(x.mean())), abs(float(y.mean()))):  # identical values up to float noise
        return Comparison(int(x.size), int(y.size), diff, confidence=confidence)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    with warnings.catch_warnings():  # a group of identical values is legitimate here (e.g. top-5 at 99.6 thrice)
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
    return Comparison(int(x.size), int(y.size), diff, diff - half, diff + half, p, float(df), confidence)


def paired(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> Comparison:
    """Paired t-test of a − b over the seeds both have (members with one seed see the same batches).

    ``n_a`` and ``n_b`` are both the number of pairs. Fewer than two pairs, or identical differences: the mean
    difference only (CI and p NaN).
    """
    seeds = sorted(set(a) & set(b))
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=float)
    if d.size == 0:
        return Comparison(0, 0, math.nan, confidence=confidence)
    diff = float(d.mean())
    if d.size < 2 or float(d.std(ddof=1)) <= 1e-12:
        return Comparison(int(d.size), int(d.size), diff, confidence=confidence)
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    df = d.size - 1
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Comparison(int(d.size), int(d.size), diff, diff - half, diff + half, p, float(df), confidence)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN entries stay NaN and do not count)."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m, out, running = len(order), [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def fmt_num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_mean_std(s: Summary, digits: int = 2) -> str:
    """``91.23 ± 0.15``; ``91.23 ± –`` for a single run; ``–`` for none."""
    if s.n == 0:
        return "–"
    return f"{s.mean:.{digits}f} ± {fmt_num(s.std, digits)}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_comparison(c: Comparison, digits: int = 2) -> str:
    """``+0.52 [−0.10, +1.14] p=0.081``, or ``+0.52 (n/a: n=1)`` when no test is possible."""
    if math.isnan(c.diff):
        return "–"
    head = fmt_num(c.diff, digits, signed=True)
    if not c.tested:
        why = f"n={min(c.n_a, c.n_b)}" if min(c.n_a, c.n_b) < 2 else "no spread"
        return f"{head} (n/a: {why})"
    return f"{head} [{fmt_num(c.ci_low, digits, True)}, {fmt_num(c.ci_high, digits, True)}] p={fmt_p(c.p)}"
