"""Figures of the report (PNG, matplotlib's object API with the Agg canvas: no display, no pyplot state).

* training loss against iteration per model, one panel per depth (the paper's figure), mean over seeds;
* test top-1 against depth per family with ± std error bars, the paper's printed numbers as hollow markers;
* test top-1 against parameters per family.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ressenet.engine.rundir import RunDir
from ressenet.experiments.palette import FAMILY_COLORS
from ressenet.experiments.paper import paper_result
from ressenet.experiments.runs import FAMILY_TITLES, label_order
from ressenet.experiments.tables import slug
from ressenet.models import family_order

if TYPE_CHECKING:
    from ressenet.experiments.contrasts import Contrast
    from ressenet.experiments.runs import FinishedRun, Group

__all__ = ["plot_protocol", "plot_curves", "plot_differences", "metric_curve", "train_loss_curve"]


def _new_figure(n_panels: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list]:
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def metric_curve(run: FinishedRun, key: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, ``key``) from a run's ``metrics.jsonl`` lines of ``kind`` ("train" or "eval"); for "train",
    every line that has ``key`` when none is of kind "train" (older runs)."""
    points: dict[int, float] = {}
    fallback: dict[int, float] = {}
    try:
        lines = RunDir(run.path).metrics_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
            it, value = int(rec["iter"]), float(rec[key])
        except (ValueError, KeyError, TypeError):
            continue
        if not math.isfinite(value):
            continue
        if rec.get("kind") == kind:
            points[it] = value
        elif kind == "train":
            fallback[it] = value
    points = points or fallback
    its = np.array(sorted(points), dtype=float)
    return its, np.array([points[int(i)] for i in its], dtype=float)


def train_loss_curve(run: FinishedRun) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, training loss) from a run's ``metrics.jsonl`` "train" lines."""
    return metric_curve(run, "train_loss", "train")


def _label(g: Group) -> str:
    return FAMILY_TITLES.get(g.family or "", g.model)


def _family_key(g: Group) -> tuple:
    return (family_order(g.family), g.model)


def plot_train_loss(groups: Sequence[Group], path: Path, title: str) -> bool:
    """Training loss against iteration, one panel per depth, one line per family (mean over seeds)."""
    return plot_curves(groups, path, title, "train_loss", "train", "training loss")


def plot_curves(groups: Sequence[Group], path: Path, title: str, key: str, kind: str, ylabel: str) -> bool:
    """``key`` of the ``kind`` lines against iteration, one panel per depth, one line per family (mean over the
    seeds, at the iterations all of them logged; faint lines: single seeds)."""
    depths = sorted({g.depth or 0 for g in groups})
    fig, axes = _new_figure(len(depths))
    drawn = False
    for ax, depth in zip(axes, depths):
        for g in sorted((g for g in groups if (g.depth or 0) == depth), key=_family_key):
            curves = [c for c in (metric_curve(r, key, kind) for r in g.runs) if c[0].size]
            if not curves:
                continue
            common = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))
            if not common:
                continue
            stacked = np.stack([np.interp(common, c[0], c[1]) for c in curves])
            color = FAMILY_COLORS.get(g.family or "")
            for c in curves if len(curves) > 1 else []:
                ax.plot(c[0], c[1], color=color, alpha=0.2, linewidth=0.6)
            ax.plot(common, stacked.mean(axis=0), color=color, linewidth=1.3,
                    marker="o" if kind == "eval" else None, markersize=3, label=f"{_label(g)} (n={len(curves)})")
            drawn = True
        ax.set_title(f"depth {depth}" if depth else "other models")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        _finish_axis(ax)
    return _save(fig, title, path, drawn)


def plot_top1_vs(groups: Sequence[Group], path: Path, x: str, title: str, paper: bool = True) -> bool:
    """Final test top-1 (mean ± std) against depth or parameters per family, one panel per dataset; the paper's
    printed numbers beside them when ``paper`` (the runs follow its protocol)."""
    labels = sorted({g.label for g in groups}, key=label_order)
    fig, axes = _new_figure(len(labels))
    drawn = False
    for ax, label in zip(axes, labels):
        fams: dict[str, list[Group]] = {}
        for g in groups:
            if g.label == label and g.family and g.depth:
                fams.setdefault(g.family, []).append(g)
        for fam, gs in sorted(fams.items(), key=lambda kv: _family_key(kv[1][0])):
            gs = sorted((g for g in gs if g.stat("test_top1").n), key=lambda g: g.depth)
            xs = [g.depth if x == "depth" else (g.params or 0) / 1e6 for g in gs]
            if not gs or (x == "params" and not all(xs)):
                continue
            stats = [g.stat("test_top1") for g in gs]
            color = FAMILY_COLORS.get(fam)
            ax.errorbar(xs, [s.mean for s in stats], yerr=[0 if math.isnan(s.std) else s.std for s in stats],
                        marker="o", capsize=3, color=color, linewidth=1.2, label=f"{_label(gs[0])} (final)")
            if x == "params":
                for xi, g, s in zip(xs, gs, stats):
                    ax.annotate(str(g.depth), (xi, s.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
            compare = gs[0].compare_to
            if compare and paper and x == "depth":  # (``printed``, not ``paper``: that flag holds for every family)
                found = [(g.depth, paper_result(fam, g.depth, compare)) for g in gs]
                printed = [(d, p.top1) for d, p in found if p is not None]
                if printed:
                    ax.plot([d for d, _ in printed], [v for _, v in printed], linestyle="--", marker="o",
                            markerfacecolor="none", color=color, alpha=0.7, linewidth=0.8,
                            label=f"{_label(gs[0])} (paper, best-on-test)")
            drawn = True
        ax.set_title(label)
        ax.set_xlabel("depth" if x == "depth" else "parameters (millions, as trained)")
        if x == "depth":
            ax.set_xticks(sorted({g.depth for gs in fams.values() for g in gs}))
        ax.set_ylabel("test top-1 (%)")
        _finish_axis(ax)
    return _save(fig, title, path, drawn)


def _finish_axis(ax: Any) -> None:
    """A light grid, and a legend when anything is labelled."""
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Figure, title: str, path: Path, drawn: bool) -> bool:
    """Titles the figure and writes it when anything was drawn; whether it was."""
    fig.suptitle(title)
    if drawn:
        fig.savefig(path, dpi=110)
    return drawn


def plot_differences(contrasts: Sequence[Contrast], path: Path, title: str) -> bool:
    """Paired differences against depth, one line per comparison with its 95% interval; the paper's printed
    differences as hollow markers."""
    fig, (ax,) = _new_figure(1, width=6.4, height=4.2)
    titles = list(dict.fromkeys(c.title for c in contrasts))
    drawn = False
    for i, name in enumerate(titles):
        cs = sorted((c for c in contrasts if c.title == name and not math.isnan(c.paired.diff)), key=lambda c: c.depth)
        if not cs:
            continue
        color = FAMILY_COLORS.get(cs[0].family_a)
        name = name.split(" (")[0]
        xs = [c.depth + (i - (len(titles) - 1) / 2) * 1.5 for c in cs]
        lo = [0 if math.isnan(c.paired.ci_low) else c.paired.diff - c.paired.ci_low for c in cs]
        hi = [0 if math.isnan(c.paired.ci_high) else c.paired.ci_high - c.paired.diff for c in cs]
        ax.errorbar(xs, [c.paired.diff for c in cs], yerr=[lo, hi], marker="o", capsize=3, color=color,
                    linewidth=1.2, label=f"{name} (ours, paired 95% interval)")
        paper = [(x, c.paper_diff) for x, c in zip(xs, cs) if c.paper_diff is not None]
        if paper:
            ax.plot([x for x, _ in paper], [v for _, v in paper], linestyle="none", marker="D",
                    markerfacecolor="none", color=color, label=f"{name} (paper, printed)")
        drawn = True
    ax.axhline(0, color="black", linewidth=0.6)
    depths = sorted({c.depth for c in contrasts})
    ax.set_xticks(depths)
    if depths:
        ax.set_xlim(depths[0] - 8, depths[-1] + 8)
    ax.set_xlabel("depth")
    ax.set_ylabel("difference in test top-1 (points)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        fig.suptitle(title, fontsize=9)
        fig.savefig(path, dpi=110)
    return drawn


def plot_protocol(groups: Sequence[Group], fig_dir: Path, suffix: str = "", schedule: str = "",
                  paper: bool = True) -> list[tuple[Path, str]]:
    """All figures for the groups of one protocol, each titled with its ``schedule``; the paper's numbers only when
    ``paper``. Returns (path, caption) of each file written."""
    sched = f", {schedule}" if schedule else ""
    fig_dir.mkdir(parents=True, exist_ok=True)
    sfx = f"_{suffix}" if suffix else ""
    out: list[tuple[Path, str]] = []
    for label in sorted({g.label for g in groups}, key=label_order):
        path = fig_dir / f"train_loss_{slug(label)}{sfx}.png"
        caption = f"Training loss against iteration on {label}{sched} (mean over seeds; faint lines: single seeds)."
        if plot_train_loss([g for g in groups if g.label == label], path, f"Training loss — {label}{sched}"):
            out.append((path, caption))
    path = fig_dir / f"top1_vs_depth{sfx}.png"
    if plot_top1_vs(groups, path, "depth", f"Test top-1 against depth{sched}", paper):
        out.append((path, "Final test top-1 against depth, mean ± std over seeds" + (
            "; hollow dashed: the paper's printed (best-on-test, single-run) numbers where the data is comparable."
            if paper else f"{sched} (the paper's numbers, from its full protocol, are not drawn).")))
    path = fig_dir / f"top1_vs_params{sfx}.png"
    if plot_top1_vs(groups, path, "params", f"Test top-1 against parameters{sched}", paper):
        out.append((path, "Final test top-1 against parameters, mean ± std over seeds; labels are depths."))
    return out
