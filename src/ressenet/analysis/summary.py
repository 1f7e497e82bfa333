"""Runs of one model (seeds) aggregated: per block position and per reliance target, mean ± std and n."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ressenet.analysis.reliance import GroupKey, RunAnalysis
from ressenet.experiments.stats import summarize
from ressenet.models import family_order, natural_key

__all__ = ["model_groups", "group_title", "block_summary", "target_summary", "whole_target"]


def model_groups(runs: Sequence[RunAnalysis]) -> dict[GroupKey, list[RunAnalysis]]:
    """Runs grouped by model and protocol (``RunAnalysis.group``), in the families table's order, seeds sorted
    within."""
    out: dict[GroupKey, list[RunAnalysis]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    order = sorted(out, key=lambda k: (family_order(out[k][0].family), natural_key(k.model), str(k)))
    return {k: sorted(out[k], key=lambda r: (r.seed, str(r.path))) for k in order}


def group_title(g: list[RunAnalysis]) -> str:
    """A group's heading: model, family, data and iterations."""
    r = g[0]
    return f"{r.model} ({r.family_title}) on {r.dataset_text}, {r.iters:,} iterations"


def block_summary(g: list[RunAnalysis], constant_std: float) -> list[dict[str, Any]]:
    """Per block position of a group: the statistics over its runs."""
    rows = []
    for site in g[0].sites:
        st = [r.stats[site.name] for r in g if site.name in r.stats]
        rel = {how: [row.result.drop for r in g for row in r.reliance
                     if row.target == site.name and row.replacement == how] for how in ("mean", "one")}
        rows.append({"site": site, "n": len(st),
                     "std_max_runs": [(r.seed, r.stats[site.name].std_max) for r in g if site.name in r.stats],
                     "std_mean": summarize([s.std_mean for s in st]), "std_max": summarize([s.std_max for s in st]),
                     "gate_mean": summarize([float(s.mean.mean()) for s in st]),
                     "between": summarize([s.between_block for s in st]),
                     "within": summarize([s.within_block for s in st]),
                     "ratio": summarize([s.ratio for s in st]), "eta2": summarize([s.eta2 for s in st]),
                     "constant": sum(s.constant(constant_std) for s in st),
                     "drop_mean": summarize(rel["mean"]), "drop_one": summarize(rel["one"])})
    return rows


def target_summary(g: list[RunAnalysis]) -> list[dict[str, Any]]:
    """Per reliance target (block or all-at-once) and replacement: drops over runs, and how many CIs exclude 0."""
    keys: list[tuple[str, str]] = []
    for r in g:
        for row in r.reliance:
            if (row.target, row.replacement) not in keys:
                keys.append((row.target, row.replacement))
    out = []
    for target, how in keys:
        res = [row.result for r in g for row in r.reliance if row.target == target and row.replacement == how]
        out.append({"target": target, "replacement": how, "drop": summarize([x.drop for x in res]),
                    "top1": summarize([x.top1 for x in res]), "excl": sum(x.excludes_zero for x in res),
                    "pos": sum(x.ci_low > 0 for x in res), "n": len(res), "results": res})
    return out



def whole_target(g: list[RunAnalysis]) -> str | None:
    """The reliance target that covers every tested block at once: "all", "all selected" or the one block."""
    targets = {row.target for r in g for row in r.reliance}
    for t in ("all", "all selected"):
        if t in targets:
            return t
    singles = [t for t in targets if not t.startswith("all")]
    return singles[0] if len(singles) == 1 else None
