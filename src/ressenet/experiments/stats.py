"""The statistics of the results layer, shared by the report, the findings page and ``ressenet analyze``.

Over seeds: mean ± sample std (:func:`summarize`), Welch's t-test with a confidence interval of the difference
(:func:`welch`), the paired t-test over shared seeds (:func:`paired`) and Holm's adjustment (:func:`holm`). On the
same test images: the paired difference of two correctness vectors with McNemar's exact test and the exact
conditional interval on the discordant pairs (:func:`paired_drop`, :func:`mcnemar`).

The paper reports single runs; seed-to-seed spread of CIFAR test accuracy is a few tenths of a point (He et al.:
ResNet-110 6.61 ± 0.16 % error over 5 runs), the size of many of its gaps. Welch's test does not assume equal
variances; its degrees of freedom come from the Welch–Satterthwaite equation.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Summary", "Comparison", "PairedDrop", "summarize", "welch", "paired", "holm", "mcnemar", "paired_drop",
           "fmt_mean_std", "fmt_comparison", "fmt_num", "fmt_p"]


def _sps() -> Any:
    """``scipy.stats``, imported when a statistic is first computed: it takes about 2 s to import (measured with
    ``python -X importtime``), and every command reaches this module through the CLI's parser."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Summary:
    """Count, mean and sample standard deviation of a set of values (a group's seeds)."""

    n: int
    mean: float  # nan when n == 0
    std: float  # sample std (ddof=1); nan when n < 2

    def fmt(self, digits: int = 3, n: bool = True, spec: str = "f") -> str:
        """``0.39 ± 0.55 (n=2)``; a single value without ± ; ``spec="g"`` for small variances; ``–`` for none."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "–" if self.n == 0 or math.isnan(self.mean) else "inf"

        def num(x: float) -> str:
            text = f"{x:.{digits}{spec}}"
            return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"

        if self.n == 1:
            return num(self.mean) + (" (n=1)" if n else "")
        return f"{num(self.mean)} ± {num(self.std)}" + (f" (n={self.n})" if n else "")


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
    half = float(_sps().t.ppf(0.5 + confidence / 2, df)) * se
    with warnings.catch_warnings():  # a group of identical values is legitimate here (e.g. top-5 at 99.6 thrice)
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(_sps().ttest_ind(x, y, equal_var=False).pvalue)
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
    half = float(_sps().t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * _sps().t.sf(abs(diff) / se, df))
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


@dataclass(frozen=True)
class PairedDrop:
    """Top-1 of the intact network minus top-1 of a modified one, in points, on the same N images.

    ``lost``: images the intact network got right and the modified one wrong; ``gained``: the reverse. The interval
    is the exact conditional (Clopper-Pearson) interval on the discordant pairs; ``p`` is McNemar's exact test.
    """

    n: int
    intact_top1: float
    top1: float
    drop: float
    ci_low: float
    ci_high: float
    lost: int
    gained: int
    p: float
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def mcnemar(lost: int, gained: int) -> float:
    """McNemar's exact test: the two-sided binomial test of ``lost`` against half the discordant pairs (1 if none)."""
    d = lost + gained
    return 1.0 if d == 0 else float(_sps().binomtest(lost, d, 0.5).pvalue)


def paired_drop(intact: Any, modified: Any, confidence: float = 0.95) -> PairedDrop:
    """The paired drop in top-1 (points) of two correctness vectors on the same images (see :class:`PairedDrop`).

    Of the ``d`` images whose correctness changed, ``b`` lost and ``c`` gained; ``b ~ Binomial(d, p)`` gives a
    Clopper-Pearson interval for ``p`` and drop ``= 100 d (2p - 1) / N`` maps it to points.
    """
    a = np.asarray(intact, dtype=bool)
    b = np.asarray(modified, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("intact and modified must be equal-length, non-empty 1-d correctness vectors")
    n = int(a.size)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    d = lost + gained
    scale = 100.0 * d / n
    alpha = 1.0 - confidence
    if d == 0:
        lo = hi = 0.0
    else:
        p_lo = float(_sps().beta.ppf(alpha / 2, lost, gained + 1)) if lost > 0 else 0.0
        p_hi = float(_sps().beta.ppf(1 - alpha / 2, lost + 1, gained)) if gained > 0 else 1.0
        lo, hi = scale * (2 * p_lo - 1), scale * (2 * p_hi - 1)
    return PairedDrop(n=n, intact_top1=100.0 * a.mean(), top1=100.0 * b.mean(), drop=100.0 * (lost - gained) / n,
                      ci_low=lo, ci_high=hi, lost=lost, gained=gained, p=mcnemar(lost, gained),
                      confidence=confidence)


def fmt_num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A number with ``digits`` decimals (``signed``: with its sign); ``–`` for None or a non-finite value."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_mean_std(s: Summary, digits: int = 2) -> str:
    """``91.23 ± 0.15``; ``91.23 ± –`` for a single run; ``–`` for none."""
    if s.n == 0:
        return "–"
    return f"{s.mean:.{digits}f} ± {fmt_num(s.std, digits)}"


def fmt_p(p: float) -> str:
    """A p-value: three decimals, or scientific notation below 0.001; ``n/a`` when it is not finite."""
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
