"""Figures of ``ressenet analyze`` (matplotlib object API, Agg canvas: no pyplot state)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ressenet.analysis.gates import hist_quantiles
from ressenet.analysis.reliance import RunAnalysis
from ressenet.analysis.sites import KIND_TEXT
from ressenet.experiments.palette import family_color
from ressenet.experiments.tables import slug

__all__ = ["draw_figures", "SITE_COLORS", "SITE_MARKERS"]

SITE_COLORS = {"bridge_after": "#d62728", "bridge_before": "#ff7f0e", "identity": "#9467bd", "residual": "#2ca02c",
               "other": "#7f7f7f"}
SITE_MARKERS = {"bridge_after": "o", "bridge_before": "D", "identity": "^", "residual": "s", "other": "x"}


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    return fig, axes


def _gkey_slug(key: tuple) -> str:
    return slug(f"{key[0]}_{key[1]}" + (f"_{key[5]}it" if key[5] else ""))


def draw_figures(runs: Sequence[RunAnalysis], groups: dict[tuple, list[RunAnalysis]],
                 out: Path) -> list[tuple[str, str]]:
    """Draw every figure into ``out``; return (file name, caption) of each."""
    figs: list[tuple[str, str]] = []
    for key, g in groups.items():
        if not g[0].sites:
            continue
        slug = _gkey_slug(key)
        name = f"gates_{slug}.png"
        _plot_gate_distributions(g, out / name)
        figs.append((name, f"Gate distributions per SE block of {g[0].model} ({len(g)} run"
                           f"{'s' if len(g) > 1 else ''} pooled): box 25–75%, line median, whiskers 1–99%, "
                           f"dots min and max."))
        first = g[0]
        name = f"class_gates_{slug}_s{first.seed}.png"
        shown = _plot_class_means(first, out / name)
        what = "bridge SE blocks" if any(s.on_bridge for s in first.sites) else \
            "SE blocks of the stage-opening blocks (where the other families have their bridges)"
        figs.append((name, f"Class-conditional mean gate minus the overall mean gate, {what} of {first.label} "
                           f"({', '.join(shown)}); channels sorted by overall mean gate."))
    if any(r.sites for r in runs):
        _plot_selectivity(runs, out / "selectivity.png")
        figs.append(("selectivity.png", "Selectivity per SE block and run: mean across-class variance of the "
                                        "class-mean gate against the mean within-class variance (log axes; dotted "
                                        "lines: ratio 1, 0.1, 0.01). Zeros are drawn at the axis floor."))
    if any(r.reliance for r in runs):
        _plot_reliance(groups, out / "reliance.png")
        figs.append(("reliance.png", "Top-1 drop (points) when a block's gate is replaced by its test-set mean (left) "
                                     "or by 1 (right); one dot per run with its 95% interval."))
    return figs


def _plot_gate_distributions(g: list[RunAnalysis], path: Path) -> None:
    sites = g[0].sites
    stats = []
    for s in sites:
        hist = sum(r.stats[s.name].hist for r in g if s.name in r.stats)
        lo = min(r.stats[s.name].lo for r in g if s.name in r.stats)
        hi = max(r.stats[s.name].hi for r in g if s.name in r.stats)
        q = hist_quantiles(hist, (0.01, 0.25, 0.5, 0.75, 0.99), lo, hi)
        stats.append({"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "fliers": [lo, hi],
                      "label": s.short})
    fig, (ax,) = _figure(max(3.5, 0.45 * len(sites) + 1.5), 3.2)
    bp = ax.bxp(stats, showfliers=True, patch_artist=True, widths=0.6,
                flierprops={"marker": ".", "markersize": 4, "markerfacecolor": "k"})
    for patch, s in zip(bp["boxes"], sites):
        patch.set_facecolor(SITE_COLORS.get(s.kind, "#7f7f7f"))
        patch.set_alpha(0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("gate value")
    ax.set_title(f"{g[0].model}: SE gates on the test set", fontsize=9)
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.savefig(path, dpi=110)


def _plot_class_means(r: RunAnalysis, path: Path) -> list[str]:
    sites = [s for s in r.sites if s.on_bridge]
    if not sites:  # residual/identity only: the SE blocks of the blocks that open a stage
        sites = [s for s in r.sites if s.index == 0] or r.sites[:3]
    sites = sites[:6]
    fig, axes = _figure(3.2 * len(sites) + 0.6, 2.8, 1, len(sites))
    for ax, s in zip(axes, sites):
        st = r.stats[s.name]
        order = np.argsort(st.mean)
        dev = (st.class_mean - st.mean[None, :])[:, order]
        lim = float(np.nanmax(np.abs(dev))) if np.isfinite(dev).any() else 0.0
        lim = lim if lim > 0 else 1e-6
        im = ax.imshow(dev, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"{s.short} (mean gate {st.mean.min():.2f}–{st.mean.max():.2f})", fontsize=8)
        ax.set_xlabel("channel (by mean gate)", fontsize=8)
        ax.set_yticks(range(len(r.classes)) if len(r.classes) <= 20 else [])
        if len(r.classes) <= 20:
            ax.set_yticklabels(r.classes, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.85).ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110)
    return [s.short for s in sites]


def _plot_selectivity(runs: Sequence[RunAnalysis], path: Path) -> None:
    fig, (ax,) = _figure(4.6, 3.8)
    pts = [(r, s, r.stats[s.name]) for r in runs for s in r.sites]
    vals = [v for _, _, st in pts for v in (st.within_block, st.between_block) if v > 0]
    floor = (min(vals) / 3) if vals else 1e-8
    seen: set[tuple[str, str]] = set()
    for r, s, st in pts:
        color = family_color(r.family)
        lbl = f"{r.family_title}, {KIND_TEXT.get(s.kind, s.kind)}"
        ax.scatter(max(st.within_block, floor), max(st.between_block, floor), c=color,
                   marker=SITE_MARKERS.get(s.kind, "x"), s=22, alpha=0.8,
                   label=lbl if (r.family or "", s.kind) not in seen else None)
        seen.add((r.family or "", s.kind))
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo_, hi_ = ax.get_xlim()
    xs = np.array([lo_, hi_])
    for k in (1.0, 0.1, 0.01):
        ax.plot(xs, k * xs, ls=":", lw=0.8, color="k")
    ax.set_xlim(lo_, hi_)
    ax.set_xlabel("within-class variance of the gate")
    ax.set_ylabel("across-class variance of class means")
    ax.legend(fontsize=6, loc="upper left")
    fig.savefig(path, dpi=110)


def _plot_reliance(groups: dict[tuple, list[RunAnalysis]], path: Path) -> None:
    labels: list[str] = []
    for g in groups.values():
        for r in g:
            for row in r.reliance:
                lbl = f"{r.model}: {row.target if row.target.startswith('all') else _site_short(r, row.target)}"
                if lbl not in labels:
                    labels.append(lbl)
    fig, axes = _figure(9.0, max(2.4, 0.22 * len(labels) + 1.2), 1, 2)
    titles = ("gate → its test-set mean", "gate → 1 (inference time, BN not recalibrated)")
    for ax, how, title in zip(axes, ("mean", "one"), titles):
        for g in groups.values():
            for j, r in enumerate(g):
                color = family_color(r.family)
                for row in r.reliance:
                    if row.replacement != how:
                        continue
                    lbl = f"{r.model}: {row.target if row.target.startswith('all') else _site_short(r, row.target)}"
                    y = labels.index(lbl) + (j - (len(g) - 1) / 2) * 0.12
                    x = row.result
                    ax.errorbar(x.drop, y, xerr=[[x.drop - x.ci_low], [x.ci_high - x.drop]], fmt="o", ms=3,
                                color=color, elinewidth=0.8, capsize=1.5)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if how == "mean" else [], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("top-1 drop (points)")
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)


def _site_short(r: RunAnalysis, name: str) -> str:
    s = next((s for s in r.sites if s.name == name), None)
    return s.short if s else name

