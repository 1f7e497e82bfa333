"""The report's results for one protocol: the paper's tables beside ours, the comparisons with Welch's tests, the
accuracy side of the paper's claim, every model and dataset.

Each section computes its numbers and returns a :class:`~ressenet.experiments.tables.Section`: its blocks (prose and
:class:`~ressenet.experiments.tables.Table` objects) and its CSV records; ``report.write_report`` renders them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ressenet.experiments.paper import PAPER_TABLES, paper_improvements, paper_result
from ressenet.experiments.runs import (
    COMPARISONS, FAMILY_TITLES, METRICS, PAPER_DEPTHS, Group, family_order, label_order, parse_model, protocol_text,
)
from ressenet.experiments.stats import Comparison, Summary, fmt_comparison, fmt_mean_std, fmt_num, welch
from ressenet.experiments.tables import Block, Section, Table

__all__ = ["protocol_sections", "without_constant_columns", "GROUP_COLUMNS", "TABLE_COLUMNS", "IMP_COLUMNS"]


def protocol_sections(gs: list[Group], pid: str, *, schedule: str | None = None) -> Section:
    """Every results section of one protocol's groups, in page order. The paper's numbers appear only without a
    ``schedule`` (the groups follow its protocol; else the schedule in words); columns that cannot differ here are
    left out."""
    paper = schedule is None
    sec = Section() if paper else Section([
        f"**The paper's numbers are not shown beside these runs:** they come from its 64,000-iteration protocol, not "
        f"this one ({schedule}), so they are not comparable.", ""])
    sec += _paper_tables(gs, pid, paper)
    sec += _comparison_tables(gs, pid, paper)
    sec += _claim_accuracy(gs, paper)
    sec += _all_groups(gs, pid, paper)
    same = all(r.value("best_test_top1") == r.value("test_top1") for g in gs for r in g.runs)
    if same:
        sec.blocks[:0] = ["Best-on-test equals final in every run here (the last evaluation was the best), so only "
                          "final is shown.", ""]
    sec.blocks = [without_constant_columns(b, same) if isinstance(b, Table) else b for b in sec.blocks]
    return sec


def without_constant_columns(table: Table, best_is_final: bool) -> Table:
    """``table`` without the columns that hold nothing ("–" in every row) and, when ``best_is_final``, without the
    best-on-test columns (each a copy of its final twin)."""
    keep = [i for i, h in enumerate(table.header)
            if not (best_is_final and "best-on-test" in h and "paper" not in h)
            and not (table.rows and all(str(row[i]) in ("–", "", "None") for row in table.rows))]
    if len(keep) == len(table.header):
        return table
    align = table.align or "l" + "r" * (len(table.header) - 1)
    return Table([table.header[i] for i in keep], [[row[i] for i in keep] for row in table.rows],
                 "".join(align[i] for i in keep))


def _stat_cols(prefix: str, s: Summary) -> dict[str, Any]:
    return {f"{prefix}_mean": s.mean, f"{prefix}_std": s.std, f"{prefix}_n": s.n}


def _cmp_cols(prefix: str, c: Comparison) -> dict[str, Any]:
    return {f"{prefix}_diff": c.diff, f"{prefix}_ci_low": c.ci_low, f"{prefix}_ci_high": c.ci_high,
            f"{prefix}_p": c.p, f"{prefix}_df": c.df}



def _paper_tables(gs: list[Group], pid: str, paper: bool) -> Section:
    """The paper's tables beside ours, one per family; records for paper_tables.csv."""
    md: list[Block] = []
    table_rows: list[dict[str, Any]] = []
    has_val = any(g.values("selected_test_top1") for g in gs)
    for table, family, title in PAPER_TABLES:
        rows_g = sorted((g for g in gs if g.family == family), key=lambda g: (label_order(g.label), g.depth))
        if not rows_g:
            continue
        headers = ["Dataset", "Depth", "n", "Top-1 final", "Top-1 best-on-test", "Paper top-1",
                   "Δ top-1 (best-on-test − paper)", "Top-5 final", "Top-5 best-on-test", "Paper top-5"]
        if has_val:
            headers += ["Top-1 val-selected", "Top-5 val-selected"]
        headers.append("Note")
        rows = []
        for g in rows_g:
            pr = paper_result(family, g.depth, g.compare_to) if g.compare_to and paper else None
            f1, f5 = g.stat("test_top1"), g.stat("test_top5")
            b1, b5 = g.stat("best_test_top1"), g.stat("best_test_top5")
            v1, v5 = g.stat("selected_test_top1"), g.stat("selected_test_top5")
            notes = []
            if pr is not None and pr.derived:
                notes.append("paper value derived (Res-SE-Net minus printed improvement)")
            if pr is not None and pr.note:
                notes.append(f"paper: {pr.note}")
            if g.compare_to and g.label not in ("CIFAR-10", "CIFAR-100"):
                notes.append(f"ours on the {g.label.split('(')[1].rstrip(')')}")
            if not g.compare_to:
                notes.append("not the paper's data: no comparison")
            delta = b1.mean - pr.top1 if pr is not None and b1.n else math.nan
            row = [g.label, g.depth, g.n, fmt_mean_std(f1), fmt_mean_std(b1), fmt_num(pr.top1 if pr else None),
                   fmt_num(delta, signed=True), fmt_mean_std(f5), fmt_mean_std(b5), fmt_num(pr.top5 if pr else None)]
            if has_val:
                row += [fmt_mean_std(v1), fmt_mean_std(v5)]
            rows.append(row + ["; ".join(notes)])
            table_rows.append({"protocol": pid, "table": table, "family": family, "model": g.model,
                               "dataset": g.label, "compared_with": g.compare_to or "", "depth": g.depth, "n": g.n,
                               **_stat_cols("final_top1", f1), **_stat_cols("final_top5", f5),
                               **_stat_cols("best_on_test_top1", b1), **_stat_cols("best_on_test_top5", b5),
                               **_stat_cols("val_selected_top1", v1), **_stat_cols("val_selected_top5", v5),
                               "paper_top1": pr.top1 if pr else None, "paper_top5": pr.top5 if pr else None,
                               "paper_source": pr.source if pr else "", "delta_best_on_test_top1_vs_paper": delta})
        derived = " (not printed in the paper: its numbers are derived from the improvement table)" \
            if family == "se_resnet" else ""
        md += [f"### Table: {title}{derived}",
               "", Table(headers, rows, "l" + "r" * (len(headers) - 2) + "l"), ""]
    return Section(md, {"paper_tables.csv": table_rows})


def _paper_delta(a_family: str, b_family: str, depth: int, dataset: str | None, metric: str,
                 printed_over: str | None) -> tuple[float | None, float | None, bool]:
    """(printed, recomputed-from-paper-results, slip) for a paper comparison cell; None where there is none."""
    if dataset is None:
        return None, None, False
    a, b = paper_result(a_family, depth, dataset), paper_result(b_family, depth, dataset)
    recomputed = round(getattr(a, metric) - getattr(b, metric), 2) if a and b else None
    if printed_over is not None:
        for imp in paper_improvements():
            if imp.over == printed_over and imp.depth == str(depth) and imp.dataset == dataset and imp.metric == metric:
                return imp.printed, imp.recomputed, imp.slip
    return None, recomputed, False


def _fmt_paper_delta(printed: float | None, recomputed: float | None, slip: bool) -> str:
    if printed is None and recomputed is None:
        return "–"
    if printed is None:
        return f"{recomputed:+.2f} (from its tables)"
    if slip:
        return f"{printed:+.2f} printed, **{recomputed:+.2f} recomputed (slip)**"
    return f"{printed:+.2f}"


def _comparison_tables(gs: list[Group], pid: str, paper_protocol: bool) -> Section:
    """The paper's comparisons with Welch's tests, per depth and averaged; records for improvements.csv."""
    md: list[Block] = []
    imp_rows: list[dict[str, Any]] = []
    index = {(g.label, g.family, g.depth): g for g in gs}
    for fa, fb, title, over in COMPARISONS:
        pairs = sorted(((ga, index[(ga.label, fb, ga.depth)]) for ga in gs
                        if ga.family == fa and (ga.label, fb, ga.depth) in index),
                       key=lambda p: (label_order(p[0].label), p[0].depth))
        if not pairs:
            continue
        headers = ["Dataset", "Depth", "n", "Δ top-1 final [95% CI]", "Δ top-1 best-on-test [95% CI]",
                   "Paper Δ top-1", "Δ top-5 final [95% CI]", "Δ top-5 best-on-test [95% CI]", "Paper Δ top-5"]
        rows = []
        by_label: dict[str, list[tuple[Group, dict[str, Comparison]]]] = {}
        for ga, gb in pairs:
            cmps = {f"{kind}_{k}": welch(ga.values(key), gb.values(key))
                    for kind, keys in METRICS.items() for k, key in zip(("top1", "top5"), keys)}
            paper = {m: _paper_delta(fa, fb, ga.depth, ga.compare_to if paper_protocol else None, m, over)
                     for m in ("top1", "top5")}
            rows.append([ga.label, ga.depth, f"{ga.n} / {gb.n}", fmt_comparison(cmps["final_top1"]),
                         fmt_comparison(cmps["best_on_test_top1"]), _fmt_paper_delta(*paper["top1"]),
                         fmt_comparison(cmps["final_top5"]), fmt_comparison(cmps["best_on_test_top5"]),
                         _fmt_paper_delta(*paper["top5"])])
            by_label.setdefault(ga.label, []).append((ga, cmps))
            row = {"protocol": pid, "comparison": f"{fa} - {fb}", "model_a": ga.model, "model_b": gb.model,
                   "dataset": ga.label, "compared_with": ga.compare_to or "", "depth": ga.depth,
                   "n_a": ga.n, "n_b": gb.n}
            for key, c in cmps.items():
                row.update(_cmp_cols(key, c))
            for m in ("top1", "top5"):
                printed, recomputed, slip = paper[m]
                row.update({f"paper_{m}_printed": printed, f"paper_{m}_recomputed": recomputed,
                            f"paper_{m}_slip": slip})
            imp_rows.append(row)
        # The average over depths, as the paper prints it: the mean of the per-depth mean differences.
        for label, items in sorted(by_label.items(), key=lambda kv: label_order(kv[0])):
            if len(items) < 2:
                continue
            depths = [g.depth for g, _ in items]
            mean = {k: _mean([c[k].diff for _, c in items]) for k in items[0][1]}
            paper_cells = []
            compare_to = items[0][0].compare_to if paper_protocol else None
            for m in ("top1", "top5"):
                rec = [_paper_delta(fa, fb, d, compare_to, m, over)[1] for d in depths]
                recomputed = _mean(rec) if compare_to and all(v is not None for v in rec) else None
                printed = None
                if over and compare_to and sorted(depths) == list(PAPER_DEPTHS):
                    printed = next(i.printed for i in paper_improvements() if i.over == over and i.depth == "average"
                                   and i.dataset == compare_to and i.metric == m)
                paper_cells.append(_fmt_paper_average(printed, recomputed))
            rows.append([label, f"mean of {len(depths)} depths", "", fmt_num(mean["final_top1"], signed=True),
                         fmt_num(mean["best_on_test_top1"], signed=True), paper_cells[0],
                         fmt_num(mean["final_top5"], signed=True), fmt_num(mean["best_on_test_top5"], signed=True),
                         paper_cells[1]])
        md += [f"### {title}", "", Table(headers, rows), ""]
    if md and paper_protocol:
        md = ["Differences are the first model minus the second, in percentage points; \"Paper Δ\" is the printed "
              "improvement where the paper prints one (recomputed from its own numbers where that differs), else "
              "the difference of its printed accuracies.", ""] + md
    elif md:
        md = ["Differences are the first model minus the second, in percentage points.", ""] + md
    return Section(md, {"improvements.csv": imp_rows})


def _fmt_paper_average(printed: float | None, recomputed: float | None) -> str:
    if recomputed is None:
        return "–"
    if printed is None:
        return f"{recomputed:+.3f} (its rows, same depths)"
    if abs(printed - recomputed) > 0.005:
        return f"{printed:+.3f} printed, **{recomputed:+.3f} recomputed (slip)**"
    return f"{printed:+.3f}"


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _claim_accuracy(gs: list[Group], paper_protocol: bool) -> list[Block]:
    """The accuracy side of the paper's claim: Res-SE-Net-44 beats ResNet-110 and SE-ResNet-110."""
    index = {(g.label, g.model): g for g in gs}
    rows = []
    for label in sorted({g.label for g in gs}, key=label_order):
        a = index.get((label, "res_se_net44"))
        for other in ("resnet110", "se_resnet110"):
            b = index.get((label, other))
            if a is None or b is None:
                continue
            c1 = welch(a.values("test_top1"), b.values("test_top1"))
            c2 = welch(a.values("best_test_top1"), b.values("best_test_top1"))
            compare = a.compare_to if paper_protocol else None
            pa = paper_result("res_se_net", 44, compare) if compare else None
            pb = paper_result(parse_model(other)[0] or "", 110, compare) if compare else None
            paper = fmt_num(pa.top1 - pb.top1, signed=True) if pa and pb else "–"
            rows.append([label, f"Res-SE-Net-44 − {FAMILY_TITLES[parse_model(other)[0] or '']}-110",
                         fmt_comparison(c1), fmt_comparison(c2), paper])
    if not rows:
        return []
    return ["### The claim \"Res-SE-Net-44 beats the 110-layer nets\" (accuracy side)", "",
            Table(["Dataset", "Comparison", "Δ top-1 final [95% CI]", "Δ top-1 best-on-test [95% CI]",
                   "Paper Δ top-1"], rows, "llrrr"), ""]


_GROUP_STATS = [(f"{kind}_{k}", key) for kind, keys in METRICS.items() for k, key in zip(("top1", "top5"), keys)]


def _all_groups(gs: list[Group], pid: str, paper: bool) -> Section:
    """Every model and dataset of a protocol; records for groups.csv."""
    rows = []
    group_rows: list[dict[str, Any]] = []
    for g in sorted(gs, key=lambda g: (label_order(g.label), family_order(g.family), g.depth or 0, g.model)):
        s = {name: g.stat(key) for name, key in _GROUP_STATS}
        pr = paper_result(g.family, g.depth, g.compare_to) if g.family and g.depth and g.compare_to and paper \
            else None
        iters = sorted({r.summary.get("iters") for r in g.runs if r.summary.get("iters") is not None})
        rows.append([g.label, g.model, g.n, ",".join(map(str, g.seeds)), fmt_mean_std(s["final_top1"]),
                     fmt_mean_std(s["best_on_test_top1"]), fmt_mean_std(s["val_selected_top1"]),
                     fmt_mean_std(s["final_top5"]), fmt_num(pr.top1 if pr else None),
                     f"{g.params:,}" if g.params else "–"])
        group_rows.append({"protocol": pid, "protocol_text": protocol_text(g.protocol), "dataset": g.label,
                           "compared_with": g.compare_to or "", "model": g.model, "family": g.family or "",
                           "depth": g.depth, "n": g.n, "seeds": " ".join(map(str, g.seeds)),
                           "iters": " ".join(map(str, iters)), "params": g.params,
                           **{f"{k}_{x}": getattr(v, x) for k, v in s.items() for x in ("mean", "std")},
                           "paper_top1": pr.top1 if pr else None, "paper_top5": pr.top5 if pr else None})
    return Section(["### Every model and dataset", "",
                    Table(["Dataset", "Model", "n", "Seeds", "Top-1 final", "Top-1 best-on-test",
                           "Top-1 val-selected", "Top-5 final", "Paper top-1", "Params"], rows, "llrlrrrrrr"), ""],
                   {"groups.csv": group_rows})



GROUP_COLUMNS = ["protocol", "protocol_text", "dataset", "compared_with", "model", "family", "depth", "n", "seeds",
                  "iters", "params"] + [f"{k}_{x}" for k, _ in _GROUP_STATS for x in ("mean", "std")] + [
                  "paper_top1", "paper_top5"]
TABLE_COLUMNS = ["protocol", "table", "family", "model", "dataset", "compared_with", "depth", "n"] + [
    f"{k}_{x}" for k in ("final_top1", "final_top5", "best_on_test_top1", "best_on_test_top5", "val_selected_top1",
                         "val_selected_top5") for x in ("mean", "std", "n")] + [
    "paper_top1", "paper_top5", "paper_source", "delta_best_on_test_top1_vs_paper"]
IMP_COLUMNS = ["protocol", "comparison", "model_a", "model_b", "dataset", "compared_with", "depth", "n_a", "n_b"] + [
    f"{k}_{x}" for k, _ in _GROUP_STATS for x in ("diff", "ci_low", "ci_high", "p", "df")] + [
    f"paper_{m}_{x}" for m in ("top1", "top5") for x in ("printed", "recomputed", "slip")]

