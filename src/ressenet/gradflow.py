"""Gradient flow over training, from the "grads" lines that ``--log-grad-stats N`` writes to metrics.jsonl.

For each bridge block (the first block of stages 2 and 3) a line holds the norm of the gradient that reaches the
block's input through the bridge (shortcut) path and through the residual branch; the paper says SE blocks on the
bridges do not hurt gradient flow, and this is how to look. ``ressenet analyze`` calls :func:`grad_flow_section`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ressenet.engine.rundir import RunDir

__all__ = ["read_grads", "grad_flow_section"]


def read_grads(run: Path) -> list[dict[str, Any]]:
    """The "grads" records of a run directory (empty when the run was trained without --log-grad-stats)."""
    try:
        return RunDir(run).metrics("grads")
    except OSError:
        return []


def _model_of(run: Path) -> str:
    files = RunDir(run)
    try:
        return str(files.read_summary()["model"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return str(files.read_config()["model"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return run.name


def grad_flow_section(run_dirs: Sequence[Path], out: Path) -> list[str]:
    """Markdown lines (a table and a figure) on bridge-path against residual-path gradients, per model over seeds;
    writes ``grad_flow.csv`` and ``grad_flow.png`` into ``out``. Empty when no run has "grads" lines."""
    per_model: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for run in run_dirs:
        recs = read_grads(Path(run))
        if recs:
            per_model[_model_of(Path(run))].append(recs)
    if not per_model:
        return []
    rows, curves = [], {}
    for model, runs in sorted(per_model.items()):
        blocks = sorted({b for recs in runs for r in recs for b in r.get("residual", {})})
        for block in blocks:
            # Per run: the mean over its logged iterations of bridge / residual norm at this block.
            ratios = []
            for recs in runs:
                vals = [r.get("bridge", {}).get(block, 0.0) / r["residual"][block] for r in recs
                        if r.get("residual", {}).get(block)]
                if vals:
                    ratios.append(float(np.mean(vals)))
            n = len(ratios)
            mean = float(np.mean(ratios)) if ratios else math.nan
            std = float(np.std(ratios, ddof=1)) if n > 1 else math.nan
            rows.append((model, block, n, mean, std))
            its = sorted({r["iter"] for recs in runs for r in recs})
            curves[(model, block)] = (its, [[next((r.get("bridge", {}).get(block, 0.0) for r in recs
                                                   if r["iter"] == it), math.nan) for it in its] for recs in runs],
                                      [[next((r.get("residual", {}).get(block, math.nan) for r in recs
                                              if r["iter"] == it), math.nan) for it in its] for recs in runs])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "grad_flow.csv").open("w") as f:
        f.write("model,block,n_runs,bridge_over_residual_mean,bridge_over_residual_std\n")
        for model, block, n, mean, std in rows:
            f.write(f"{model},{block},{n},{mean:.6g},{std:.6g}\n")
    _plot(curves, out / "grad_flow.png")
    lines = ["## Gradient flow at the bridges", "",
             "From the `--log-grad-stats` lines of metrics.jsonl: the gradient norm reaching each bridge block's input "
             "through the bridge (shortcut) path, over the norm through the residual branch, averaged over the "
             "logged iterations of a run, then over runs (mean ± std, n runs). A model without bridges has no bridge "
             "path (ratio 0).", "",
             "| model | block | n | bridge / residual |", "|---|---|---|---|"]
    for model, block, n, mean, std in rows:
        spread = f" ± {std:.3f}" if math.isfinite(std) else ""
        lines.append(f"| {model} | {block} | {n} | {mean:.3f}{spread} |")
    lines += ["", "![gradient flow](grad_flow.png)", ""]
    return lines


def _plot(curves: dict[tuple[str, str], tuple[list[int], list[list[float]], list[list[float]]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = sorted({b for _, b in curves})
    fig = Figure(figsize=(4.4 * len(blocks), 3.4))
    FigureCanvasAgg(fig)
    for i, block in enumerate(blocks):
        ax = fig.add_subplot(1, len(blocks), i + 1)
        for (model, b), (its, bridge, residual) in sorted(curves.items()):
            if b != block:
                continue
            ax.plot(its, np.nanmean(np.array(bridge, dtype=float), axis=0), label=f"{model}: bridge path")
            ax.plot(its, np.nanmean(np.array(residual, dtype=float), axis=0), linestyle="--",
                    label=f"{model}: residual path")
        ax.set_title(f"block {block}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("gradient norm at the block input")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
