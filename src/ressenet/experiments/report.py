"""The report of a runs folder: the paper's tables beside ours (mean ± SD over seeds), comparisons with tests,
parameters, figures; it only reads run directories, never trains.

Three accuracies are kept apart: **final** (the last iteration's weights, our primary number), **best-on-test** (the
paper's way: the best test accuracy seen while training, optimistic) and **validation-selected** (runs trained with
``data.val_split``). Runs group by protocol, dataset label and model. Each part returns a ``Section``
(experiments/tables.py): ``report_results.py`` per protocol, ``report_paper.py`` for the paper's own tables and the
parameter counts, the rest here; ``write_report`` renders ``report.md`` and its CSVs.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ressenet import __version__
from ressenet.errors import not_a_folder
from ressenet.experiments.contrasts import comparison_sentence, contrasts
from ressenet.experiments.findings import PRECISION_KEYS
from ressenet.experiments.schedule_page import schedule_text
from ressenet.experiments.kept import kept_comparison
from ressenet.experiments.report_paper import paper_improvement_section, params_section
from ressenet.experiments.report_results import (
    GROUP_COLUMNS, IMP_COLUMNS, TABLE_COLUMNS, protocol_sections, without_constant_columns,
)
from ressenet.experiments.runs import FinishedRun, Group, collect_runs, group_runs, label_order, protocol_text
from ressenet.experiments.stats import fmt_num
from ressenet.experiments.tables import Block, Section, Table, render
from ressenet.files import atomic_write_text

__all__ = ["write_report", "ReportResult"]


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    """What ``write_report`` wrote: the page, its CSVs and figures, and how many runs it read."""

    out_dir: Path
    report: Path
    csvs: list[Path]
    figures: list[Path]
    n_runs: int
    n_unfinished: int
    problems: list[str]
    kept_summary: str | None = None  # with kept_dir: whether the runs agree with the kept ones, in one sentence


def write_report(runs_dir: str | Path, out_dir: str | Path, *, figures: bool = True,
                 title: str = "Res-SE-Net reproduction report", kept_dir: str | Path | None = None) -> ReportResult:
    """Read every run under ``runs_dir`` and write ``report.md``, CSV files and figures to ``out_dir``.

    Files: ``report.md``; ``runs.csv`` (one row per finished run), ``groups.csv`` (mean/std per protocol, dataset
    and model, with the paper's numbers), ``paper_tables.csv``, ``improvements.csv`` (ours, with 95% CI and Welch
    p-values), ``paper_improvements.csv`` (printed vs recomputed, slips flagged), ``params.csv``; ``figures/*.png``.
    With ``kept_dir`` (the same grid's runs kept in the repository), a section compares the runs with them.

    Raises:
        FileNotFoundError: ``runs_dir`` does not exist.
    """
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

    page = Section([f"# {title}", ""])
    page += [f"Generated {time.strftime('%Y-%m-%d %H:%M')} by ressenet {__version__} from `{runs_dir}`: "
             f"{len(runs)} finished run(s) in {len(groups)} group(s) (model × dataset × protocol); "
             f"{len(unfinished)} unfinished run(s) not used. The paper is Varshaneya et al., \"Res-SE-Net: Boosting "
             f"Performance of Resnets by Enhancing Bridge-connections\", arXiv:1902.06066."]
    page += ["", *_reading_notes(), ""]
    dup_notes = _duplicate_seed_notes(groups.values())
    if problems or dup_notes:
        page += ["**Problems found while reading the runs:**", ""]
        page += [f"- {p}" for p in problems + dup_notes] + [""]
    page += _data_section(runs)
    page += Section(records={"runs.csv": _runs_rows(runs, pid)})

    fig_paths: list[Path] = []
    answers: list[Block] = []
    if not runs:
        page += ["## Results", "", f"No finished runs under `{runs_dir}` yet: only the paper's own numbers and the "
                 "parameter counts follow. `ressenet grid PRESET --runs-dir DIR` trains them.", ""]
    for p in protocols:
        gs = [g for g in groups.values() if g.protocol == p]
        heading = f"## Results{f' — protocol {pid[p]}' if multi else ''}"
        page += [heading, "", f"Protocol: {protocol_text(p)}.", ""]
        paper = all(k in PRECISION_KEYS for k, _ in p)
        schedule = schedule_text(p)
        page += protocol_sections(gs, pid[p], schedule=None if paper else schedule)
        answers += _answers(gs, schedule, paper)
        if figures:
            from ressenet.experiments.figures import plot_protocol  # Matplotlib loads only when figures are drawn

            figs = plot_protocol(gs, out / "figures", suffix=pid[p], schedule=schedule, paper=paper)
            fig_paths += [f for f, _ in figs]
            if figs:
                page += ["### Figures", ""]
                for f, caption in figs:
                    page += [f"![{caption}](figures/{f.name})", "", f"*{caption}*", ""]

    kept = kept_comparison(runs, kept_dir) if kept_dir is not None and runs else []
    page += kept
    page += paper_improvement_section()
    page += params_section(runs)
    page += _provenance(runs, unfinished)
    if answers:
        page += ["## What the comparisons show", "", *answers]

    report = out / "report.md"
    atomic_write_text(report, "\n".join(render(page.blocks)).rstrip() + "\n")
    csvs = [page.table(name, columns).write_csv(out / name) for name, columns in CSV_COLUMNS.items()]
    return ReportResult(out, report, csvs, fig_paths, len(runs), len(unfinished), problems + dup_notes,
                        kept[-2] if kept else None)


def _answers(gs: list[Group], schedule: str, paper: bool) -> list[Block]:
    """One sentence per dataset of a protocol, as the findings page words it: paired by seed, Holm-adjusted."""
    out: list[Block] = []
    for label in sorted({g.label for g in gs}, key=label_order):
        tests = contrasts([g for g in gs if g.label == label])
        if tests:
            ns = sorted({g.n for g in gs if g.label == label})
            n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
            out += [comparison_sentence(tests, f"{label}, {schedule}, n = {n}", full_protocol=paper), ""]
    return out


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


def _data_section(runs: list[FinishedRun]) -> list[Block]:
    """One row per distinct data a label covers: runs with other split sizes (a validation split, a limit) or another
    source get their own row, never the first run's figures."""
    if not runs:
        return []
    by_data: dict[tuple[str, str, str, str], list[FinishedRun]] = {}
    for r in runs:
        data = r.summary.get("data") or {}
        sizes = "/".join(str(data.get(k, "?")) for k in ("train_size", "val_size", "test_size"))
        key = (r.label, str(data.get("source", r.summary.get("dataset", "?"))), str(data.get("description", "–")),
               sizes)
        by_data.setdefault(key, []).append(r)
    rows = []
    for (label, source, description, sizes), rs in sorted(by_data.items(), key=lambda kv: (label_order(kv[0][0]),
                                                                                              kv[0][1:])):
        compared = f"with the paper's {rs[0].compare_to.upper().replace('CIFAR', 'CIFAR-')}" if rs[0].compare_to \
            else "no (not the paper's data)"
        rows.append([label, source, description, sizes, len(rs), compared])
    return ["## Data", "", Table(["Dataset label", "Source", "Description", "Train/val/test images", "Runs",
                                  "Compared"], rows, "lllrrl"), ""]


_RUNS_COLUMNS = ["dir", "protocol", "model", "family", "depth", "dataset", "compared_with", "seed", "iters", "params",
                 "test_top1", "test_top5", "test_loss", "best_test_top1", "best_test_top5", "best_test_iter",
                 "val_top1", "best_val_top1", "best_val_iter", "selected_test_top1", "selected_test_top5",
                 "wall_seconds", "train_images_per_second", "data_source", "data_description", "device", "device_name",
                 "precision", "torch", "ressenet", "git_commit"]


def _runs_rows(runs: list[FinishedRun], pid: dict) -> list[dict[str, Any]]:
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


def _provenance(runs: list[FinishedRun], unfinished: list[tuple[str, str]]) -> list[Block]:
    md: list[Block] = ["## Runs", ""]
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
        best_is_final = all(r.value("best_test_top1") == r.value("test_top1") for r in runs)
        md.append(without_constant_columns(Table(
            ["Run directory", "Model", "Dataset", "Seed", "Iterations", "Top-1 final", "Top-1 best-on-test @ iter",
             "Wall time", "Device", "Precision", "Commit"], rows, "lllrrrrrlll"), best_is_final))
        md.append("")
    if unfinished:
        md += ["Unfinished (no `summary.json`; re-run the grid to resume them; not used above): " +
               ", ".join(f"`{d}` ({p})" for d, p in unfinished), ""]
    return md


# The CSV files beside report.md, in the order they are written, with their columns.
CSV_COLUMNS = {
    "runs.csv": _RUNS_COLUMNS,
    "groups.csv": GROUP_COLUMNS,
    "paper_tables.csv": TABLE_COLUMNS,
    "improvements.csv": IMP_COLUMNS,
    "paper_improvements.csv": ["over", "depth", "dataset", "metric", "printed", "recomputed", "slip", "note"],
    "params.csv": ["model", "family", "depth", "params_10", "params_100", "params_10_option_a", "he_m"],
}
