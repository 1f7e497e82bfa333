"""The report: the paper's tables beside ours (mean ± std over seeds), improvements with tests, parameters, figures.

Reproduces the tables of Varshaneya et al., "Res-SE-Net: Boosting Performance of Resnets by Enhancing
Bridge-connections" (arXiv:1902.06066) from run directories written by ``ressenet train``. Reporting only reads run
directories (``summary.json``, ``config.yaml``, ``metrics.jsonl``); it never trains.

Three kinds of accuracy are kept apart, because the paper's way is optimistic:

* **final**: the weights after the last iteration (``test_top1``) — our primary number;
* **best-on-test**: the best test accuracy seen during training (``best_test_top1``), the paper's way (its code
  selects the model on the test set);
* **validation-selected**: test accuracy of the checkpoint chosen on a held-out validation split
  (``selected_test_top1``), only for runs trained with ``data.val_split``.

Runs are grouped by protocol (the result-relevant config keys other than model, dataset and seed), dataset label
and model; an image-folder copy of CIFAR-10 is labelled "CIFAR-10 (JPEG copy)" and compared with the paper's
CIFAR-10 numbers with that label, synthetic data is never compared.
"""
from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ressenet.data.constants import DATASET_INFO
from ressenet.engine.checkpoint import atomic_write_text
from ressenet.errors import not_a_folder
from ressenet.experiments.paper import (
    HE_PARAMS_M, PARAM_CLAIMS, PAPER_TABLES, paper_improvements, paper_result, percent_fewer,
)
from ressenet.experiments.runs import (
    COMPARISONS, FAMILY_TITLES, METRICS, PAPER_DEPTHS, Group, Run, collect_runs,
    dataset_label, family_order, group_runs, label_order, md_table, parse_model, protocol_text,
)
from ressenet.experiments.stats import (
    Comparison, Summary, fmt_comparison, fmt_mean_std, fmt_num, welch,
)

__all__ = ["Run", "Group", "collect_runs", "group_runs", "dataset_label", "parse_model", "write_report",
           "ReportResult", "METRICS", "FAMILY_TITLES"]

# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def model_params(name: str, num_classes: int = 10) -> int:
    """Parameters of a registered model with its defaults (basic blocks, projection bridges)."""
    from ressenet.models import count_params, create_model

    return count_params(create_model(name, num_classes=num_classes))


@lru_cache(maxsize=None)
def model_params_a(name: str, num_classes: int = 10) -> int:
    """Parameters with He et al.'s option-A (subsample + zero-pad) shortcuts."""
    from ressenet.models import count_params, create_model

    return count_params(create_model(name, num_classes=num_classes, shortcut="A"))


def _model_name(family: str, depth: int) -> str:
    from ressenet.models import FAMILY

    return FAMILY[family].model_name(depth)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    out_dir: Path
    report: Path
    csvs: list[Path]
    figures: list[Path]
    n_runs: int
    n_unfinished: int
    problems: list[str]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> Path:
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in columns})
    atomic_write_text(path, f.getvalue())
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    if v is None:
        return ""
    return v


def _stat_cols(prefix: str, s: Summary) -> dict[str, Any]:
    return {f"{prefix}_mean": s.mean, f"{prefix}_std": s.std, f"{prefix}_n": s.n}


def _cmp_cols(prefix: str, c: Comparison) -> dict[str, Any]:
    return {f"{prefix}_diff": c.diff, f"{prefix}_ci_low": c.ci_low, f"{prefix}_ci_high": c.ci_high,
            f"{prefix}_p": c.p, f"{prefix}_df": c.df}


def write_report(runs_dir: str | Path, out_dir: str | Path, *, figures: bool = True,
                 title: str = "Res-SE-Net reproduction report") -> ReportResult:
    """Read every run under ``runs_dir`` and write ``report.md``, CSV files and figures to ``out_dir``.

    Files: ``report.md``; ``runs.csv`` (one row per finished run), ``groups.csv`` (mean/std per protocol, dataset
    and model, with the paper's numbers), ``paper_tables.csv``, ``improvements.csv`` (ours, with 95% CI and Welch
    p-values), ``paper_improvements.csv`` (printed vs recomputed, slips flagged), ``params.csv``; ``figures/*.png``.

    Raises:
        FileNotFoundError: ``runs_dir`` does not exist.
    """
    from ressenet import __version__

    runs, unfinished, problems = collect_runs(runs_dir)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        if (file := not_a_folder(out)) is not None:
            raise file from None
        raise
    groups = group_runs(runs)
    protocols = sorted({g.protocol for g in groups.values()}, key=lambda p: (-sum(
        g.n for g in groups.values() if g.protocol == p), protocol_text(p)))
    multi = len(protocols) > 1
    pid = {p: (f"p{i}" if multi else "") for i, p in enumerate(protocols, 1)}

    md: list[str] = [f"# {title}", ""]
    md.append(f"Generated {time.strftime('%Y-%m-%d %H:%M')} by ressenet {__version__} from `{runs_dir}`: "
              f"{len(runs)} finished run(s) in {len(groups)} group(s) (model × dataset × protocol); "
              f"{len(unfinished)} unfinished run(s) not used. The paper is Varshaneya et al., \"Res-SE-Net: Boosting "
              f"Performance of Resnets by Enhancing Bridge-connections\", arXiv:1902.06066.")
    md += ["", *_reading_notes(), ""]
    dup_notes = _duplicate_seed_notes(groups.values())
    if problems or dup_notes:
        md += ["**Problems found while reading the runs:**", ""]
        md += [f"- {p}" for p in problems + dup_notes] + [""]
    md += _data_section(runs)

    runs_rows = _runs_rows(runs, pid)
    group_rows: list[dict[str, Any]] = []
    table_rows: list[dict[str, Any]] = []
    imp_rows: list[dict[str, Any]] = []
    fig_paths: list[Path] = []
    if not runs:
        md += ["## Results", "", f"No finished runs under `{runs_dir}` yet: only the paper's own numbers and the "
               "parameter counts follow. `ressenet grid PRESET --runs-dir DIR` trains them.", ""]
    for p in protocols:
        gs = [g for g in groups.values() if g.protocol == p]
        heading = f"## Results{f' — protocol {pid[p]}' if multi else ''}"
        md += [heading, "", f"Protocol: {protocol_text(p)}.", ""]
        md += _paper_tables(gs, pid[p], table_rows)
        md += _comparison_tables(gs, pid[p], imp_rows)
        md += _claim_accuracy(gs)
        md += _all_groups(gs, pid[p], group_rows)
        if figures:
            from ressenet.experiments.figures import plot_protocol

            figs = plot_protocol(gs, out / "figures", suffix=pid[p])
            fig_paths += [f for f, _ in figs]
            if figs:
                md += ["### Figures", ""]
                for f, caption in figs:
                    md += [f"![{caption}](figures/{f.name})", "", f"*{caption}*", ""]

    md += _paper_improvement_section()
    param_rows: list[dict[str, Any]] = []
    md += _params_section(runs, param_rows)
    md += _provenance(runs, unfinished)

    report = out / "report.md"
    atomic_write_text(report, "\n".join(md).rstrip() + "\n")
    csvs = [
        _write_csv(out / "runs.csv", runs_rows, _RUNS_COLUMNS),
        _write_csv(out / "groups.csv", group_rows, _GROUP_COLUMNS),
        _write_csv(out / "paper_tables.csv", table_rows, _TABLE_COLUMNS),
        _write_csv(out / "improvements.csv", imp_rows, _IMP_COLUMNS),
        _write_csv(out / "paper_improvements.csv", [
            {"over": i.over, "depth": i.depth, "dataset": i.dataset, "metric": i.metric, "printed": i.printed,
             "recomputed": i.recomputed, "slip": i.slip, "note": i.note} for i in paper_improvements()],
            ["over", "depth", "dataset", "metric", "printed", "recomputed", "slip", "note"]),
        _write_csv(out / "params.csv", param_rows, ["model", "family", "depth", "params_10", "params_100",
                                                    "params_10_option_a", "he_m"]),
    ]
    return ReportResult(out, report, csvs, fig_paths, len(runs), len(unfinished), problems + dup_notes)


def _reading_notes() -> list[str]:
    return [
        "How to read it:",
        "",
        "- **final**: test accuracy of the weights after the last iteration — our primary number.",
        "- **best-on-test**: the best test accuracy seen during training, the paper's way (its code selects the "
        "model on the test set, which is optimistic). Compare these with the paper's printed numbers.",
        "- **val-selected**: test accuracy of the checkpoint chosen on a validation split held out of the training "
        "set; shown only for runs trained with `data.val_split`.",
        "- Ours are mean ± sample std (ddof=1) over seeds, with n runs; \"± –\" means a single run. The paper's "
        "numbers are single runs (seed 12), best-on-test. Accuracies in %, differences in percentage points.",
        "- Differences between models: mean difference, 95% confidence interval (Welch–Satterthwaite degrees of "
        "freedom) and Welch's two-sided t-test p-value; \"n/a\" where a group has fewer than two runs.",
        "- The dataset of every number is named in its row; \"CIFAR-10 (JPEG copy)\" is a lossy image-folder copy "
        "of CIFAR-10, compared with the paper's CIFAR-10 numbers but not digit-for-digit comparable with them.",
    ]


def _duplicate_seed_notes(groups: Iterable[Group]) -> list[str]:
    notes = []
    for g in groups:
        seeds = [r.seed for r in g.runs]
        dups = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
        if dups:
            dirs = ", ".join(r.rel for r in g.runs if r.seed in dups)
            notes.append(f"{g.model} on {g.label}: seed(s) {', '.join(map(str, dups))} appear more than once "
                         f"({dirs}); all are counted, which understates the spread if they are copies")
    return notes


def _data_section(runs: list[Run]) -> list[str]:
    if not runs:
        return []
    by_label: dict[str, list[Run]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    rows = []
    for label in sorted(by_label, key=label_order):
        rs = by_label[label]
        data = rs[0].summary.get("data") or {}
        sizes = "/".join(str(data.get(k, "?")) for k in ("train_size", "val_size", "test_size"))
        compared = f"with the paper's {rs[0].compare_to.upper().replace('CIFAR', 'CIFAR-')}" if rs[0].compare_to \
            else "no (not the paper's data)"
        rows.append([label, data.get("source", rs[0].summary.get("dataset", "?")), data.get("description", "–"),
                     sizes, len(rs), compared])
    return ["## Data", "", *md_table(["Dataset label", "Source", "Description", "Train/val/test images", "Runs",
                                       "Compared"], rows, "lllrrl"), ""]


def _paper_tables(gs: list[Group], pid: str, table_rows: list[dict[str, Any]]) -> list[str]:
    md: list[str] = []
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
            pr = paper_result(family, g.depth, g.compare_to) if g.compare_to else None
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
               "", *md_table(headers, rows, "l" + "r" * (len(headers) - 2) + "l"), ""]
    return md


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


def _comparison_tables(gs: list[Group], pid: str, imp_rows: list[dict[str, Any]]) -> list[str]:
    md: list[str] = []
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
            paper = {m: _paper_delta(fa, fb, ga.depth, ga.compare_to, m, over) for m in ("top1", "top5")}
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
            compare_to = items[0][0].compare_to
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
        md += [f"### {title}", "", *md_table(headers, rows), ""]
    if md:
        md = ["Differences are the first model minus the second, in percentage points; \"Paper Δ\" is the printed "
              "improvement where the paper prints one (recomputed from its own numbers where that differs), else "
              "the difference of its printed accuracies.", ""] + md
    return md


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


def _claim_accuracy(gs: list[Group]) -> list[str]:
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
            pa = paper_result("res_se_net", 44, a.compare_to) if a.compare_to else None
            pb = paper_result(parse_model(other)[0] or "", 110, a.compare_to) if a.compare_to else None
            paper = fmt_num(pa.top1 - pb.top1, signed=True) if pa and pb else "–"
            rows.append([label, f"Res-SE-Net-44 − {FAMILY_TITLES[parse_model(other)[0] or '']}-110",
                         fmt_comparison(c1), fmt_comparison(c2), paper])
    if not rows:
        return []
    return ["### The claim \"Res-SE-Net-44 beats the 110-layer nets\" (accuracy side)", "",
            *md_table(["Dataset", "Comparison", "Δ top-1 final [95% CI]", "Δ top-1 best-on-test [95% CI]",
                        "Paper Δ top-1"], rows, "llrrr"), ""]


_GROUP_STATS = [(f"{kind}_{k}", key) for kind, keys in METRICS.items() for k, key in zip(("top1", "top5"), keys)]


def _all_groups(gs: list[Group], pid: str, group_rows: list[dict[str, Any]]) -> list[str]:
    rows = []
    for g in sorted(gs, key=lambda g: (label_order(g.label), family_order(g.family), g.depth or 0, g.model)):
        s = {name: g.stat(key) for name, key in _GROUP_STATS}
        pr = paper_result(g.family, g.depth, g.compare_to) if g.family and g.depth and g.compare_to else None
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
    return ["### Every model and dataset", "",
            *md_table(["Dataset", "Model", "n", "Seeds", "Top-1 final", "Top-1 best-on-test", "Top-1 val-selected",
                        "Top-5 final", "Paper top-1", "Params"], rows, "llrlrrrrrr"), ""]


def _paper_improvement_section() -> list[str]:
    imps = paper_improvements()
    md = ["## The paper's improvement tables, recomputed from its own numbers", "",
          "Printed: the paper's tables (`paper/improvements.csv`); recomputed: Res-SE-Net minus the other model from "
          "the paper's accuracies (`paper/results.csv`), averages as the mean of the recomputed rows. Cells that "
          "differ by more than rounding (0.005) are **slips**. The SE-ResNet accuracies are themselves derived from "
          "the printed \"over SE-ResNet\" table, so that table agrees by construction and checks only its averages.",
          ""]
    cols = [("cifar10", "top1", "CIFAR-10 top-1"), ("cifar10", "top5", "CIFAR-10 top-5"),
            ("cifar100", "top1", "CIFAR-100 top-1"), ("cifar100", "top5", "CIFAR-100 top-5")]
    for over, title in (("resnet", "Res-SE-Net over ResNet"), ("se_resnet", "Res-SE-Net over SE-ResNet")):
        rows = []
        for depth in [*map(str, PAPER_DEPTHS), "average"]:
            row: list[Any] = [depth]
            for ds, metric, _ in cols:
                imp = next((i for i in imps if i.over == over and i.depth == depth and i.dataset == ds
                            and i.metric == metric), None)
                if imp is None:
                    row.append("–")
                elif imp.slip:
                    row.append(f"**{imp.printed:g} → {imp.recomputed:g} (slip)**")
                else:
                    row.append(f"{imp.printed:g}")
            rows.append(row)
        md += [f"### {title}", "", *md_table(["Depth", *(c[2] for c in cols)], rows), ""]
    slips = [i for i in imps if i.slip]
    if slips:
        md += ["Slips found:", ""]
        for i in slips:
            ds = DATASET_INFO[i.dataset].title
            md.append(f"- over {FAMILY_TITLES[i.over]}, depth {i.depth}, {ds} {i.metric.replace('top', 'top-')}: "
                      f"printed {i.printed:g}, recomputed {i.recomputed:g}{f' ({i.note})' if i.note else ''}.")
        md.append("")
    return md


def _params_section(runs: list[Run], param_rows: list[dict[str, Any]]) -> list[str]:
    families = ["resnet", "se_resnet", "res_se_net", "resnet_nobridge"]
    families += sorted({r.family for r in runs if r.family and r.family not in families}, key=family_order)
    rows = []
    for depth in PAPER_DEPTHS:
        row: list[Any] = [depth]
        for fam in families:
            name = _model_name(fam, depth)
            p10, p100 = model_params(name, 10), model_params(name, 100)
            row.append(f"{p10:,} ({p10 / 1e6:.2f}M)")
            param_rows.append({"model": name, "family": fam, "depth": depth, "params_10": p10, "params_100": p100,
                               "he_m": HE_PARAMS_M.get(depth) if fam == "resnet" else None})
        # He et al.'s CIFAR ResNets use parameter-free option-A shortcuts; the paper's bridges are option B.
        he = HE_PARAMS_M[depth]
        digits = len(str(he).split(".")[1])
        option_a = model_params_a(f"resnet{depth}")
        row.append(f"{option_a:,}")
        row.append(f"{he:g}M ({'matches option A' if round(option_a / 1e6, digits) == he else 'differs'})")
        param_rows[-len(families)]["params_10_option_a"] = option_a
        rows.append(row)
    md = ["## Parameters", "",
          "Counted from the model registry with a 10-class head (basic blocks, projection bridges: the paper's "
          "models; a 100-class head adds 5,850 parameters). He et al.'s counts are for ResNet with parameter-free "
          "option-A shortcuts, shown beside them.", "",
          *md_table(["Depth", *(FAMILY_TITLES.get(f, f) for f in families), "ResNet, option A", "He et al."],
                     rows), ""]
    claim_rows = []
    for small, large, claimed in PARAM_CLAIMS:
        ps, pl = model_params(small, 10), model_params(large, 10)
        ours = percent_fewer(ps, pl)
        holds = abs(round(ours, 2) - claimed) <= 0.005 + 1e-9
        claim_rows.append([f"{small} vs {large}", f"{ps:,} vs {pl:,}", f"{ours:.2f}%", f"{claimed:.2f}%",
                           "yes" if holds else f"no (off by {ours - claimed:+.2f} pp)"])
    md += ["The paper's claim: Res-SE-Net-44 has 61.75% fewer parameters than ResNet-110 and 62.06% fewer than "
           "SE-ResNet-110.", "",
           *md_table(["Models", "Parameters", "Fewer (ours)", "Fewer (claimed)", "Claim holds"], claim_rows,
                      "lrrrl"), ""]
    return md


_RUNS_COLUMNS = ["dir", "protocol", "model", "family", "depth", "dataset", "compared_with", "seed", "iters", "params",
                 "test_top1", "test_top5", "test_loss", "best_test_top1", "best_test_top5", "best_test_iter",
                 "val_top1", "best_val_top1", "best_val_iter", "selected_test_top1", "selected_test_top5",
                 "wall_seconds", "train_images_per_second", "data_source", "data_description", "device", "device_name",
                 "precision", "torch", "ressenet", "git_commit"]
_GROUP_COLUMNS = ["protocol", "protocol_text", "dataset", "compared_with", "model", "family", "depth", "n", "seeds",
                  "iters", "params"] + [f"{k}_{x}" for k, _ in _GROUP_STATS for x in ("mean", "std")] + [
                  "paper_top1", "paper_top5"]
_TABLE_COLUMNS = ["protocol", "table", "family", "model", "dataset", "compared_with", "depth", "n"] + [
    f"{k}_{x}" for k in ("final_top1", "final_top5", "best_on_test_top1", "best_on_test_top5", "val_selected_top1",
                         "val_selected_top5") for x in ("mean", "std", "n")] + [
    "paper_top1", "paper_top5", "paper_source", "delta_best_on_test_top1_vs_paper"]
_IMP_COLUMNS = ["protocol", "comparison", "model_a", "model_b", "dataset", "compared_with", "depth", "n_a", "n_b"] + [
    f"{k}_{x}" for k, _ in _GROUP_STATS for x in ("diff", "ci_low", "ci_high", "p", "df")] + [
    f"paper_{m}_{x}" for m in ("top1", "top5") for x in ("printed", "recomputed", "slip")]


def _runs_rows(runs: list[Run], pid: dict) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(runs, key=lambda r: r.rel):
        data = r.summary.get("data") or {}
        row = {"dir": r.rel, "protocol": pid.get(r.protocol, ""), "model": r.model, "family": r.family or "",
               "depth": r.depth, "dataset": r.label, "compared_with": r.compare_to or "", "seed": r.seed,
               "data_source": data.get("source"), "data_description": data.get("description"),
               **{k: r.meta.get(k) for k in ("device", "device_name", "precision", "torch", "ressenet", "git_commit")}}
        for key in _RUNS_COLUMNS:
            if key not in row:
                row[key] = r.summary.get(key)
        rows.append(row)
    return rows


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _provenance(runs: list[Run], unfinished: list[tuple[str, str]]) -> list[str]:
    md = ["## Runs", ""]
    if runs:
        rows = []
        for r in sorted(runs, key=lambda r: r.rel):
            best_iter = r.summary.get("best_test_iter")
            wall = r.value("wall_seconds")
            rows.append([f"`{r.rel}`", r.model, r.label, r.seed if r.seed is not None else "?",
                         r.summary.get("iters", "?"), fmt_num(r.value("test_top1")),
                         f"{fmt_num(r.value('best_test_top1'))} @ {best_iter if best_iter is not None else '?'}",
                         _fmt_seconds(wall), r.meta.get("device_name") or r.meta.get("device") or "–",
                         r.meta.get("precision") or (r.config.get("run") or {}).get("precision") or "–",
                         str(r.meta.get("git_commit") or "–")[:10]])
        md += md_table(["Run directory", "Model", "Dataset", "Seed", "Iterations", "Top-1 final",
                         "Top-1 best-on-test @ iter", "Wall time", "Device", "Precision", "Commit"], rows,
                        "lllrrrrrlll")
        md.append("")
    if unfinished:
        md += ["Unfinished (no `summary.json`; re-run the grid to resume them; not used above): " +
               ", ".join(f"`{d}` ({p})" for d, p in unfinished), ""]
    return md
