"""The findings page: what the committed runs say about the paper's comparison, and what is still missing.

``ressenet report results/paper --findings docs/findings.md [--partial results/incomplete] [--readme README.md]``
reads finished run directories (only those trained with the paper's protocol count), and writes:

* the main table: final test top-1, mean ± sample std over seeds and n, per family and depth, the paper's printed
  (single-run, best-on-test) number beside it;
* the comparisons the paper makes (Res-SE-Net over ResNet and over SE-ResNet; no bridges; the two negative
  ablations): the difference with a 95% interval and p-value from a paired t-test over shared seeds (members with
  one seed see the same batches) and from Welch's test, Holm-adjusted over every comparison tested, so that
  "significant" survives the number of comparisons;
* accuracy against depth and the training-loss curves (PNG beside the page);
* runs stopped before the end (``--partial``), shown as such, never as results;
* the cells of the paper's grid with fewer than 3 seeds, and the GPU-hours they cost at the measured fused rates.

The output depends only on the run directories: running the command twice changes nothing.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ressenet.data.constants import DATASET_INFO
from ressenet.engine.checkpoint import atomic_write_text
from ressenet.engine.config import Config
from ressenet.engine.rundir import RunDir
from ressenet.experiments.paper import paper_result
from ressenet.experiments.runs import (
    COMPARISONS, FAMILY_TITLES, PAPER_DEPTHS, FinishedRun, Group, collect_runs, family_order, group_runs, protocol_text,
)
from ressenet.experiments.stats import Comparison, fmt_mean_std, fmt_num, fmt_p, holm, paired, summarize, welch
from ressenet.experiments.tables import Block, Table, render, slug

__all__ = ["write_findings", "fused_rate", "load_fused_rates", "MIN_SEEDS"]

MIN_SEEDS = 3  # a cell with fewer seeds is "missing"
PAPER_FAMILIES = ("resnet", "se_resnet", "res_se_net", "resnet_nobridge")
PAPER_DATASETS = tuple((k, DATASET_INFO[k].title) for k in ("cifar10", "cifar100"))
ITER_IMAGES = 64_000 * 128  # images one protocol run trains on
RATES_FILE = Path(__file__).resolve().parent / "rates.yaml"
PRECISION_KEYS = frozenset({"run.precision"})
README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"


def load_fused_rates(path: Path = RATES_FILE) -> tuple[dict[int, float], int]:
    """The measured aggregate training rates of a fused group on one H200 (images/s by depth) and the depth other
    depths are extrapolated from, read from ``rates.yaml`` beside this module.

    The figures are BENCHMARKS.md's ("Fused training (several runs at once)", the paper's grid on one H200); the
    file is their one copy in the code, so the cost model and its sentence change when it does.
    """
    import yaml

    data = yaml.safe_load(path.read_text())
    rates = {int(d): float(r) for d, r in data["fused_h200_images_per_second"].items()}
    return rates, int(data["extrapolate_from_depth"])


MEASURED_FUSED_RATE, _EXTRAPOLATE_FROM = load_fused_rates()


def _blocks_per_stage(depth: int) -> int:
    return (depth - 2) // 6


def fused_rate(depth: int) -> tuple[float, bool]:
    """(images/s, measured?) of a fused group at ``depth`` on one H200: measured, or scaled as 1 / blocks per stage
    from the measured depth ``extrapolate_from_depth`` of ``rates.yaml``."""
    if depth in MEASURED_FUSED_RATE:
        return MEASURED_FUSED_RATE[depth], True
    base = _EXTRAPOLATE_FROM
    return MEASURED_FUSED_RATE[base] * _blocks_per_stage(base) / _blocks_per_stage(depth), False


def _rates_text() -> str:
    """``119,000 images/s at depth 20, 45,000 at depth 56``: the measured rates in words."""
    return ", ".join(f"{rate:,.0f}{' images/s' if i == 0 else ''} at depth {d}"
                     for i, (d, rate) in enumerate(sorted(MEASURED_FUSED_RATE.items())))


def _title(family: str | None) -> str:
    return FAMILY_TITLES.get(family or "", family or "?")


def _seed_values(g: Group | None) -> dict[int, float]:
    if g is None:
        return {}
    return {r.seed: v for r in g.runs if r.seed is not None and (v := r.value("test_top1")) is not None}


def _cmp_text(c: Comparison, p_adj: float) -> str:
    if math.isnan(c.diff):
        return "–"
    if not c.tested:
        return f"{fmt_num(c.diff, 2, True)} (not testable: n={min(c.n_a, c.n_b)})"
    return (f"{fmt_num(c.diff, 2, True)} [{fmt_num(c.ci_low, 2, True)}, {fmt_num(c.ci_high, 2, True)}], "
            f"p={fmt_p(c.p)}, Holm p={fmt_p(p_adj)}")


def _paper_groups(runs: list[FinishedRun]) -> tuple[dict[tuple[str, str], Group], list[str], list[FinishedRun]]:
    """Groups of paper-protocol runs keyed by (dataset label, model); the labels; runs of other protocols."""
    # Arithmetic precision is a device choice (bf16 autocast on GPUs, fp32 on CPUs), not part of the paper's
    # protocol: runs differing only in it are pooled, and the page says so.
    paper = [replace(r, protocol=()) for r in runs
             if all(k in PRECISION_KEYS for k, _ in r.protocol) and r.compare_to is not None]
    kept = {r.path for r in paper}
    others = [r for r in runs if r.path not in kept]
    groups = {(g.label, g.model): g for g in group_runs(paper).values()}
    labels = sorted({g.label for g in groups.values()})
    return groups, labels, others


Test = tuple[str, str, int, Comparison, Comparison]  # (data label, title, depth, paired, Welch)


def _comparisons(groups: dict[tuple[str, str], Group], labels: Sequence[str]) -> list[Test]:
    """The paper's comparisons (runs.COMPARISONS) at every depth and dataset where both sides have finished runs."""
    tests: list[Test] = []
    for label in labels:
        gs = {(g.family, g.depth): g for (lab, _), g in groups.items() if lab == label}
        for fa, fb, title, _ in COMPARISONS:
            for d in sorted({dd for (_, dd) in gs if dd}):
                a, b = gs.get((fa, d)), gs.get((fb, d))
                if a is None or b is None:
                    continue
                tests.append((label, title, d, paired(_seed_values(a), _seed_values(b)),
                              welch(a.values("test_top1"), b.values("test_top1"))))
    return tests


def _comparison_table(tests: list[Test]) -> list[Block]:
    """The comparisons as a table, Holm-adjusted over the tested ones of ``tests``."""
    adj_p = holm([t[3].p for t in tests])
    adj_w = holm([t[4].p for t in tests])
    rows = []
    for (label, title, d, cp, cw), pp, pw in zip(tests, adj_p, adj_w):
        verdict = ("not testable" if not cp.tested else
                   ("yes" if pp < 0.05 else "no") + " (paired, Holm)")
        rows.append([label, title, d, cp.n_a, _cmp_text(cp, pp), _cmp_text(cw, pw), verdict])
    head = [f"Differences in final test top-1 (percentage points), 95% intervals; Holm's adjustment runs over "
            f"all {sum(t[3].tested for t in tests)} tested comparisons of this table.", ""]
    return head + _table(["data", "comparison", "depth", "pairs", "paired by seed", "Welch", "significant?"], rows)


def schedule_text(protocol: tuple[tuple[str, Any], ...]) -> str:
    """A run protocol in words for a label: "paper protocol compressed 8x (8,000 iterations, lr ÷10 at 4,000 and
    6,000), bf16" when it is the paper's schedule shortened in proportion; else ``protocol_text``."""
    keys = dict(protocol)
    iters, ms = keys.get("optim.iters"), keys.get("optim.milestones")
    rest = {k: v for k, v in keys.items() if k not in ("optim.iters", "optim.milestones", "run.precision")}
    paper = Config().optim
    if isinstance(iters, int) and 0 < iters < paper.iters and not rest and paper.iters % iters == 0 and \
            tuple(ms or ()) == tuple(m * iters // paper.iters for m in paper.milestones):
        text = (f"paper protocol compressed {paper.iters // iters}x ({iters:,} iterations, lr ÷10 at "
                f"{' and '.join(f'{m:,}' for m in ms)})")
    elif not rest and iters is None and ms is None:
        text = "paper protocol (64,000 iterations)"
    else:
        return protocol_text(protocol)
    precision = keys.get("run.precision")
    return text + (f", {precision}" if precision and precision != "auto" else "")


def _schedule_section(runs_dir: Path, fig_dir: Path, rel_fig: str, figures: bool) -> tuple[list[Block], list[Block]]:
    """A runs folder of a shorter schedule (the ``compressed`` preset's): its table, comparisons, curves and one
    sentence, every number labelled with the data and the schedule. Returns (page blocks, README blocks)."""
    runs, unfinished, problems = collect_runs(runs_dir)
    paper = [r for r in runs if r.compare_to is not None]
    by_protocol: dict[tuple, list[FinishedRun]] = {}
    for r in paper:
        by_protocol.setdefault(r.protocol, []).append(r)
    page: list[Block] = []
    readme: list[Block] = []
    for i, (protocol, rs) in enumerate(sorted(by_protocol.items(), key=lambda kv: -len(kv[1]))):
        groups = {(g.label, g.model): g for g in group_runs(rs).values()}
        labels = sorted({g.label for g in groups.values()})
        sched = schedule_text(protocol)
        name = slug(runs_dir.name) + ("" if len(by_protocol) == 1 else f"_{i + 1}")
        page += [f"## {sched[0].upper() + sched[1:]}: `{runs_dir}`", ""]
        page += [f"Final-model test top-1 (%) of the runs in `{runs_dir}`, trained with the {sched}. n = number of "
                 f"seeds; a shorter schedule than the paper's, so these numbers say nothing about the paper's "
                 f"64,000-iteration protocol above.", ""]
        page += [f"Problems found while reading the runs: {'; '.join(problems)}.", ""] if problems else []
        tests = _comparisons(groups, labels)
        for label in labels:
            gs = sorted((g for (lab, _), g in groups.items() if lab == label),
                        key=lambda g: (g.depth or 0, family_order(g.family)))
            n_all = sorted({g.n for g in gs})
            tag = f"{label}, {sched}, n = {'–'.join(map(str, (n_all[0], n_all[-1])) if len(n_all) > 1 else str(n_all[0]))}"
            rows = [[_title(g.family), g.depth, g.n, fmt_mean_std(g.stat("test_top1")),
                     fmt_mean_std(g.stat("test_top5"))] for g in gs]
            page += [f"**{tag}**:", ""]
            page += _table(["family", "depth", "n", "final test top-1 (%)", "final test top-5 (%)"], rows) + [""]
            mine = [t for t in tests if t[0] == label]
            if mine:
                page += _comparison_table(mine) + [""]
            sentence = _sentence(mine, tag)
            page += [sentence, ""]
            readme += [f"**{tag}** (from [`{runs_dir}`]({runs_dir})):", ""]
            readme += _table(["model", "n", "final test top-1 (%)"],
                             [[g.model, g.n, fmt_mean_std(g.stat("test_top1"))] for g in gs]) + ["", sentence, ""]
        if figures and groups:
            from ressenet.experiments.figures import plot_curves, plot_train_loss

            fig_dir.mkdir(parents=True, exist_ok=True)
            gl = list(groups.values())
            shown = []
            if plot_curves(gl, fig_dir / f"test_top1_{name}.png", f"Test top-1 — {sched}", "test_top1", "eval",
                           "test top-1 (%)"):
                shown.append((f"test_top1_{name}.png", f"Test top-1 against iteration, {sched} (mean over seeds; "
                                                      f"faint: single seeds)"))
            if plot_train_loss(gl, fig_dir / f"train_loss_{name}.png", f"Training loss — {sched}"):
                shown.append((f"train_loss_{name}.png", f"Training loss against iteration, {sched} (mean over "
                                                       f"seeds; faint: single seeds)"))
            page += [f"![{cap}]({rel_fig}/{name})\n\n{cap}.\n" for name, cap in shown]
    analysis = fig_dir.parent / f"analysis-{runs_dir.name}" / "analysis.md"
    if by_protocol and analysis.is_file():
        # Written by `ressenet analyze` (it trains nothing, and takes minutes per run), kept beside this page.
        page += [f"What the SE blocks of these runs learned (gate statistics, class selectivity, reliance): "
                 f"[{analysis.parent.name}/analysis.md]({analysis.parent.name}/analysis.md), written by "
                 f"`ressenet analyze RUN_DIR ... --out {_rel(analysis.parent, Path.cwd())}` from the Res-SE-Net "
                 f"and SE-ResNet runs that kept a `last.pt` (listed there).", ""]
    if not by_protocol:
        page += [f"## `{runs_dir}`", "", "No finished run there yet.", ""]
    if unfinished:
        page += [f"Still training or stopped in `{runs_dir}` (they resume with the same `ressenet grid` command): "
                 + ", ".join(f"{d} ({p})" for d, p in unfinished) + ".", ""]
    return page, readme


def _sentence(tests: list[Test], tag: str) -> str:
    """One sentence that claims no more than the paired intervals allow, and stays at this schedule."""
    tested = [(t, a) for t, a in zip(tests, holm([t[3].p for t in tests])) if t[3].tested]
    if not tested:
        return (f"**No answer yet at this schedule** ({tag}): no comparison has two seeds of both sides; the grid "
                f"is still training.")
    parts, shown = [], []
    for (label, title, d, c, _), a in tested:
        span = f"{fmt_num(c.diff, 2, True)} points [{fmt_num(c.ci_low, 2, True)}, {fmt_num(c.ci_high, 2, True)}]"
        if a < 0.05:
            parts.append(f"{title} at depth {d} ({c.n_a} pairs): {span}, Holm p={fmt_p(a)}, a difference at this "
                         f"schedule")
            shown.append(title)
        elif c.ci_low > 0 or c.ci_high < 0:
            parts.append(f"{title} at depth {d} ({c.n_a} pairs): {span}, Holm p={fmt_p(a)}: the unadjusted "
                         f"interval excludes zero, but the difference does not survive the adjustment for "
                         f"{len(tested)} comparisons, so no difference is shown")
        else:
            parts.append(f"{title} at depth {d} ({c.n_a} pairs): {span}, Holm p={fmt_p(a)}, no difference shown")
    head = ("**At this schedule no comparison shows a difference** (paired by seed, 95% intervals, Holm-adjusted)"
            if not shown else f"**At this schedule, {len(shown)} of {len(tested)} comparisons show a difference** "
                              f"(paired by seed, 95% intervals, Holm-adjusted)")
    return (f"{head}: " + "; ".join(parts) + ". Where no difference is shown, either sign remains possible at "
            "this number of seeds; none of this carries over to the paper's full protocol.")



def write_findings(runs_dir: str | Path, out_md: str | Path, *, partial_dirs: Sequence[str | Path] = (),
                   schedule_dirs: Sequence[str | Path] = (), readme: str | Path | None = None,
                   figures: bool = True) -> Path:
    """Writes the findings page (and its figures in ``<out_md stem>/``); refreshes README's block if asked."""
    runs_dir, out_md = Path(runs_dir), Path(out_md)
    if readme is not None:  # before anything is written: a slip must not leave the README replaced by the page
        readme_block(Path(readme), out_md)
    runs, unfinished, problems = collect_runs(runs_dir)
    groups, labels, others = _paper_groups(runs)
    fig_dir = out_md.with_suffix("")
    rel_fig = fig_dir.name
    page = ["# Findings: Res-SE-Net against ResNet and SE-ResNet", "",
            f"Generated from the run directories in `{runs_dir}` by "
            f"`{_command(runs_dir, out_md, partial_dirs, schedule_dirs, readme)}`; do not edit by hand. Accuracy is the final "
            f"model's test top-1 (not the best-on-test number the paper's code reports). Protocol: "
            f"{protocol_text(())}; arithmetic as each run's device chose (bf16 autocast on GPUs, fp32 on CPUs). "
            f"n = number of seeds.", ""]
    if problems:
        page += ["Problems found while reading the runs:", ""] + [f"- {p}" for p in problems] + [""]

    # -- main table ------------------------------------------------------------------------------------------
    page += ["## Main table", ""]
    if not groups:
        page += ["No finished run with the paper's protocol yet.", ""]
    for label in labels:
        gs = {g.model: g for (lab, _), g in groups.items() if lab == label}
        compare = next(iter(gs.values())).compare_to
        depths = sorted({g.depth for g in gs.values() if g.depth} | set(PAPER_DEPTHS))
        rows = []
        fams = sorted({g.family for g in gs.values() if g.family} | set(PAPER_FAMILIES),
                      key=family_order)
        for fam in fams:
            row = [_title(fam)]
            for d in depths:
                g = next((g for g in gs.values() if g.family == fam and g.depth == d), None)
                ours = f"{fmt_mean_std(g.stat('test_top1'))} (n={g.n})" if g else "–"
                pr = paper_result(fam, d, compare) if compare else None
                row.append(f"{ours}; paper {pr.top1:.2f}" if pr else ours)
            rows.append(row)
        page += [f"**{label}**, final test top-1 (%), ours mean ± std (n); the paper's single best-on-test run "
                 f"after 'paper':", ""] + _table(["family"] + [f"depth {d}" for d in depths], rows) + [""]

    # -- comparisons -----------------------------------------------------------------------------------------
    page += ["## Comparisons", ""]
    tests = _comparisons(groups, labels)
    if not tests:
        page += ["No comparison is possible yet: no depth has finished runs of both families of any comparison.",
                 ""]
    else:
        page += _comparison_table(tests) + [""]

    # -- figures ---------------------------------------------------------------------------------------------
    if figures and groups:
        from ressenet.experiments.figures import plot_top1_vs, plot_train_loss

        fig_dir.mkdir(parents=True, exist_ok=True)
        gl = list(groups.values())
        shown = []
        if plot_top1_vs(gl, fig_dir / "top1_vs_depth.png", "depth", "Final test top-1 against depth"):
            shown.append(("top1_vs_depth.png", "Final test top-1 against depth (error bars: std over seeds; "
                                               "dashed: the paper)"))
        if plot_train_loss(gl, fig_dir / "train_loss.png", "Training loss (the paper's figure)"):
            shown.append(("train_loss.png", "Training loss against iteration, mean over seeds"))
        page += ["## Figures", ""] + [f"![{cap}]({rel_fig}/{name})\n\n{cap}.\n" for name, cap in shown]

    # -- shorter schedules ----------------------------------------------------------------------------------
    readme_extra: list[Block] = []
    for sdir in schedule_dirs:
        sec, rd = _schedule_section(Path(sdir), fig_dir, rel_fig, figures)
        page += sec
        readme_extra += rd

    # -- partial runs ----------------------------------------------------------------------------------------
    partial_blocks = _partial_section(partial_dirs, out_md, fig_dir, rel_fig, figures)
    page += partial_blocks

    # -- missing ---------------------------------------------------------------------------------------------
    page += ["## Still missing", ""]
    have = {(g.compare_to, g.family, g.depth): g.n for g in groups.values()}
    rows, total_runs, total_h = [], 0, 0.0
    for ds, title in PAPER_DATASETS:
        for d in PAPER_DEPTHS:
            short = [f"{_title(f)} ({have.get((ds, f, d), 0)})" for f in PAPER_FAMILIES
                     if have.get((ds, f, d), 0) < MIN_SEEDS]
            if not short:
                continue
            runs_needed = sum(MIN_SEEDS - have.get((ds, f, d), 0) for f in PAPER_FAMILIES
                              if have.get((ds, f, d), 0) < MIN_SEEDS)
            rate, measured = fused_rate(d)
            hours = runs_needed * ITER_IMAGES / rate / 3600
            total_runs += runs_needed
            total_h += hours
            rows.append([title, d, ", ".join(short), runs_needed,
                         f"{hours:.2f}" + ("" if measured else " (rate extrapolated)")])
    page += [f"Cells of the paper's grid (4 families x 5 depths x 2 datasets) with fewer than {MIN_SEEDS} finished "
             f"seeds (seeds present in parentheses), and the H200 hours they cost as fused groups at the measured "
             f"rates (BENCHMARKS.md: {_rates_text()}; other depths extrapolated as 1/blocks). CIFAR-100 cannot "
             f"be trained offline here (no copy of it on the project's machines); CIFAR-10 rows count the JPEG "
             f"copy.", ""]
    page += _table(["data", "depth", "families short of seeds (n)", "runs to train", "H200 hours"], rows) + [""]
    page += [f"In all: {total_runs} runs, about {total_h:.1f} H200 hours.", ""]
    if unfinished:
        page += [f"Unfinished run directories in `{runs_dir}`: "
                 + ", ".join(f"{d} ({p})" for d, p in unfinished) + ".", ""]
    if others:
        page += [f"{len(others)} finished runs with another protocol or non-CIFAR data are not counted: "
                 + ", ".join(sorted(r.rel for r in others)) + ".", ""]

    out_md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_md, "\n".join(render(page)).rstrip() + "\n")
    if readme is not None:
        _refresh_readme(Path(readme), groups, labels, tests, out_md, rel_fig, readme_extra)
    return out_md


def _partial_section(partial_dirs: Sequence[str | Path], out_md: Path, fig_dir: Path, rel_fig: str,
                     figures: bool) -> list[Block]:
    """Runs stopped before the end: test top-1 at the last iteration every run of a family reached."""
    page: list[Block] = []
    for pdir in partial_dirs:
        pdir = Path(pdir)
        for job in sorted(p for p in pdir.iterdir() if p.is_dir()) if pdir.is_dir() else []:
            curves: dict[str, list[list[dict[str, Any]]]] = {}
            for found in (RunDir(p) for p in sorted(job.iterdir())):
                run = found.path
                if not found.metrics_file.is_file():
                    continue
                try:
                    recs = found.metrics()
                except OSError:
                    continue
                model = run.name.rsplit("-s", 1)[0]
                curves.setdefault(model, []).append([r for r in recs if r.get("kind") == "eval"])
            if not curves:
                continue
            last = min(max(r["iter"] for r in c) for cs in curves.values() for c in cs if c)
            rows = []
            for model, cs in curves.items():
                vals = [next(r["test_top1"] for r in c if r["iter"] == last) for c in cs
                        if any(r["iter"] == last for r in c)]
                s = summarize(vals)
                rows.append([model, s.n, fmt_mean_std(s)])
            page += [f"### `{job}`: stopped at iteration {last:,} of 64,000", "",
                     f"Test top-1 (%) at iteration {last:,} (learning rate still 0.1, before the schedule's drops): "
                     f"not the protocol's result, and no ranking follows from it.", ""]
            page += _table(["model", "n", f"test top-1 at {last:,}"], rows) + [""]
    if page:
        page = ["## Runs stopped before the end", "",
                "These GPU jobs hit their time limit; their checkpoints were not kept, so they cannot resume. "
                "Their metrics are kept as evidence of the fused engine and of the early training phase.", ""] + page
    return page


def readme_block(readme: Path, out_md: Path) -> tuple[list[str], list[int], list[int]]:
    """The README's lines and its one findings block (start and end line indices, one each).

    Raises:
        ValueError: the README is the findings page itself, is unreadable, or lacks exactly one pair of markers.
    """
    if readme.resolve() == out_md.resolve():
        raise ValueError(f"--findings and --readme both name {readme}: the page would replace the README; give the "
                         f"findings page its own file, e.g. --findings docs/findings.md")
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"README {readme} cannot be read ({type(e).__name__}); check --readme") from None
    # The markers count only on lines of their own: prose may quote them. Exactly one pair, start first.
    lines = text.splitlines(keepends=True)
    empty = README_START + README_END  # an empty block on one line
    starts = [i for i, ln in enumerate(lines) if ln.strip() in (README_START, empty)]
    ends = [i for i, ln in enumerate(lines) if ln.strip() in (README_END, empty)]
    if not starts or not ends:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block; add the two markers, each on a "
                         f"line of its own, where the findings summary goes")
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{readme} has {len(starts)} {README_START} and {len(ends)} {README_END} line(s)"
                         f"{', the end first' if len(starts) == len(ends) == 1 else ''}: which block to replace is "
                         f"ambiguous; keep one start line followed by one end line")
    return lines, starts, ends


def _refresh_readme(readme: Path, groups: dict[tuple[str, str], Group], labels: list[str],
                    tests: list[Test], out_md: Path, rel_fig: str, extra: Sequence[Block] = ()) -> None:
    """Replaces the block between the README's findings markers with a short table and one sentence."""
    lines, starts, ends = readme_block(readme, out_md)
    page = _rel(out_md, readme.parent)
    block: list[Block] = [README_START, ""]
    rows = []
    for (label, _), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1].depth or 0, kv[1].family or "")):
        s = g.stat("test_top1")
        pr = paper_result(g.family or "", g.depth or 0, g.compare_to) if g.compare_to else None
        rows.append([label, g.model, s.n, fmt_mean_std(s), f"{pr.top1:.2f}" if pr else "–"])
    if rows:
        block += _table(["data", "model", "n", "final test top-1 (%)", "paper (best-on-test)"], rows) + [""]
    tested = [t for t in tests if t[3].tested]
    if not tested:
        block += [f"**No answer yet.** No comparison of the paper has two or more seeds of both sides at the full "
                  f"protocol, so nothing can be said about whether Res-SE-Net beats ResNet or SE-ResNet. What exists, "
                  f"and what it costs to fill in, is on the [findings page]({page})."]
    else:
        adj = holm([t[3].p for t in tests])
        parts = [f"{t[1]} at depth {t[2]} on {t[0]}: {fmt_num(t[3].diff, 2, True)} points "
                 f"[{fmt_num(t[3].ci_low, 2, True)}, {fmt_num(t[3].ci_high, 2, True)}], Holm p={fmt_p(a)}"
                 for t, a in zip(tests, adj) if t[3].tested]
        block += ["Paired by seed, 95% intervals: " + "; ".join(parts) + f". Details: [findings page]({page})."]
    if extra:
        block += ["", "At a shorter schedule (details and curves on the [findings page]({page})):".format(page=page),
                  ""] + list(extra)
    while block[-1] == "":
        block.pop()
    block += ["", README_END]
    newline = "\n" if lines[ends[0]].endswith("\n") else ""
    atomic_write_text(readme, "".join(lines[:starts[0]]) + "\n".join(render(block)) + newline + "".join(lines[ends[0] + 1:]))


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def _command(runs_dir: Path, out_md: Path, partial: Sequence[str | Path], schedules: Sequence[str | Path],
             readme: str | Path | None) -> str:
    cmd = f"ressenet report {runs_dir} --findings {out_md}"
    cmd += "".join(f" --partial {p}" for p in partial)
    cmd += "".join(f" --schedule {p}" for p in schedules)
    return cmd + (f" --readme {readme}" if readme else "")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Block]:
    """A table of the findings page (every column left-aligned), as a block of the page: rendered when written."""
    return [Table(headers, list(rows), align="l" * len(headers))]
