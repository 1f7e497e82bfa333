"""The findings page: what the committed runs say about the paper's comparison, and what is still missing.

``ressenet report results/paper --findings docs/findings.md [--partial DIR] [--schedule DIR] [--readme README.md]``
reads finished run directories and writes, in this order:

* the answer so far, in three sentences;
* each shorter schedule (``--schedule``, the compressed grid): its table beside the paper's printed numbers, the
  differences against depth, every comparison paired by seed and Holm-adjusted together, the per-seed values and
  the provenance of the runs (``schedule_page.py``);
* the paper's full protocol (runs in ``runs_dir`` trained with it), its comparisons, and the runs stopped before the
  end (``--partial``), shown as such, never as results;
* why our numbers sit below the paper's (the paper's best-on-test single runs; the JPEG copy, measured with
  published real-data weights by ``benchmarks/akamaster_eval.py``);
* what is missing: planned runs of the shorter schedules, and the paper's grid priced in GPU-hours (``costs.py``).

The output depends only on the run directories (and the committed akamaster figures): running the command twice
changes nothing.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ressenet.files import atomic_write_text
from ressenet.engine.rundir import RunDir
from ressenet.experiments.contrasts import (PRIMARY_TEST, Contrast, contrast_table, contrasts, mean_sd, table,
                                            title_of)
from ressenet.experiments.costs import PAPER_FAMILIES, missing_section
from ressenet.experiments.paper import paper_result
from ressenet.experiments.readme_block import check_readme, refresh_readme
from ressenet.experiments.runs import PAPER_DEPTHS, FinishedRun, Group, collect_runs, family_order, group_runs
from ressenet.experiments.schedule_page import ScheduleSection, provenance, schedule_section
from ressenet.experiments.stats import fmt_num, summarize
from ressenet.experiments.tables import Block, render

__all__ = ["write_findings", "AKAMASTER_RESULTS", "AKAMASTER_COMMAND"]

PRECISION_KEYS = frozenset({"run.precision"})
AKAMASTER_RESULTS = Path("benchmarks/results/akamaster_eval.json")  # relative to where the command runs
AKAMASTER_COMMAND = ("git clone https://github.com/akamaster/pytorch_resnet_cifar10 aka && python3 "
                     "benchmarks/akamaster_eval.py --git-dir aka/.git --data-root ../shared/data/cifar10-jpeg.tar.gz "
                     f"--json {AKAMASTER_RESULTS}")


def _paper_groups(runs: list[FinishedRun]) -> tuple[list[Group], list[FinishedRun]]:
    """Groups of paper-protocol runs, and the runs of other protocols. Arithmetic precision is a device choice, not
    part of the paper's protocol: runs differing only in it are pooled, and the page says so."""
    paper = [replace(r, protocol=()) for r in runs
             if all(k in PRECISION_KEYS for k, _ in r.protocol) and r.compare_to is not None]
    kept = {r.path for r in paper}
    groups = sorted(group_runs(paper).values(), key=lambda g: (g.label, g.depth or 0, family_order(g.family)))
    return groups, [r for r in runs if r.path not in kept]


def _precisions(groups: Sequence[Group]) -> str:
    found = sorted({str(r.meta.get("precision", "unrecorded")) for g in groups for r in g.runs})
    return ", ".join(found) if found else "none yet"


def _answer(schedules: Sequence[ScheduleSection], full: Sequence[Contrast], groups: Sequence[Group]) -> list[Block]:
    """The answer so far in three sentences: the shorter schedule, the full protocol, what is missing."""
    cs = [c for s in schedules for c in s.contrasts]
    tested = [c for c in cs if c.tested]
    tags = "; ".join(t for s in schedules for t in s.tags)
    if tested:
        main = next((c for c in tested if (c.family_a, c.family_b) == ("res_se_net", "resnet")), tested[0])
        first = (f"At the shorter schedule ({tags}), {sum(c.shown for c in tested)} of {len(tested)} comparisons "
                 f"show a difference by the primary test (paired by seed, Holm-adjusted over all of them); "
                 f"{main.title} at depth {main.depth} is {fmt_num(main.paired.diff, 2, True)} points "
                 f"[{fmt_num(main.paired.ci_low, 2, True)}, {fmt_num(main.paired.ci_high, 2, True)}]")
        if main.paper_diff is not None and not main.paired.ci_low <= main.paper_diff <= main.paired.ci_high:
            side = "above its upper end" if main.paper_diff > main.paired.ci_high else "below its lower end"
            first += f", and the paper's {fmt_num(main.paper_diff, 2, True)} lies {side}"
        first += "."
    else:
        first = "No shorter schedule has two seeds of both sides of any comparison yet."
    n_full = sum(g.n for g in groups)
    if any(c.tested for c in full):
        ft = [c for c in full if c.tested]
        lead = next((c for c in ft if (c.family_a, c.family_b) == ("res_se_net", "resnet")), ft[0])
        p = lead.paired
        second = (f"At the paper's full protocol (64,000 iterations), {sum(c.shown for c in ft)} of {len(ft)} "
                  f"comparisons show a difference; {lead.title} at depth {lead.depth} is {fmt_num(p.diff, 2, True)} "
                  f"points [{fmt_num(p.ci_low, 2, True)}, {fmt_num(p.ci_high, 2, True)}] over {p.n_a} pairs")
        if lead.paper_diff is not None:
            where = ("inside it" if p.ci_low <= lead.paper_diff <= p.ci_high else
                     "above its upper end" if lead.paper_diff > p.ci_high else "below its lower end")
            second += f", and the paper's {fmt_num(lead.paper_diff, 2, True)} lies {where}"
        second += "."
    else:
        have = f" (the {n_full} finished: " + ", ".join(
            f"{g.model} {mean_sd(g.stat('test_top1'))}" for g in groups) + ")" if groups else ""
        second = (f"At the paper's full protocol (64,000 iterations) there is no answer yet: no comparison has two "
                  f"seeds of both sides{have}.")
    third = ("What is missing (planned runs of the shorter schedule, the paper's grid and its GPU cost) is listed at "
             "the end; nothing here carries over from the shorter schedule to the paper's protocol.")
    return ["## The answer so far", "", f"{first} {second} {third}", ""]


def _full_protocol(groups: list[Group], tests: list[Contrast], others: list[FinishedRun], fig_dir: Path,
                   rel_fig: str, figures: bool) -> list[Block]:
    """The full-protocol table (ours beside the paper's at every depth), its comparisons and figures."""
    page: list[Block] = ["## The paper's full protocol (64,000 iterations)", ""]
    if not groups:
        page += ["No finished run with the paper's protocol yet.", ""]
    for label in sorted({g.label for g in groups}):
        gs = [g for g in groups if g.label == label]
        compare = gs[0].compare_to
        depths = sorted({g.depth for g in gs if g.depth} | set(PAPER_DEPTHS))
        rows = []
        for fam in sorted({g.family for g in gs if g.family} | set(PAPER_FAMILIES), key=family_order):
            row = [title_of(fam)]
            for d in depths:
                g = next((g for g in gs if g.family == fam and g.depth == d), None)
                ours = f"{mean_sd(g.stat('test_top1'))} (n={g.n})" if g else "–"
                pr = paper_result(fam, d, compare) if compare else None
                row.append(f"{ours}; paper {pr.top1:.2f}" if pr else ours)
            rows.append(row)
        page += [f"**{label}**, final test top-1 (%), ours mean ± SD over seeds (n; one seed: the value alone); "
                 f"after 'paper': its printed single run at its best test accuracy over all epochs (the released "
                 f"script's `--rounds 1` and best-on-test reporting):", ""]
        page += table(["family"] + [f"depth {d}" for d in depths], rows) + [""]
    page += provenance([r for g in groups for r in g.runs]) if groups else []
    if any(c.tested for c in tests):
        page += [PRIMARY_TEST, ""] + contrast_table(tests) + [""]
    else:
        page += ["No comparison is possible yet at this protocol: no depth has two seeds of both families of any "
                 "comparison.", ""]
    if figures and groups:
        # Matplotlib loads only when figures are drawn
        from ressenet.experiments.figures import plot_top1_vs, plot_train_loss

        fig_dir.mkdir(parents=True, exist_ok=True)
        several = any(g.n > 1 for g in groups)
        if plot_top1_vs(groups, fig_dir / "top1_vs_depth.png", "depth", "Final test top-1 against depth"):
            cap = ("Final test top-1 against depth (" + ("error bars: SD over seeds; " if several else "single runs; ")
                   + "dashed: the paper)")
            page += [f"![{cap}]({rel_fig}/top1_vs_depth.png)\n\n{cap}.\n"]
        if plot_train_loss(groups, fig_dir / "train_loss.png", "Training loss (the paper's figure)"):
            cap = "Training loss against iteration" + (", mean over seeds" if several else ", single runs")
            page += [f"![{cap}]({rel_fig}/train_loss.png)\n\n{cap}.\n"]
    if others:
        page += [f"{len(others)} finished runs with another protocol or non-CIFAR data are not counted: "
                 + ", ".join(sorted(r.rel for r in others)) + ".", ""]
    return page


def _gap(groups: list[Group]) -> list[Block]:
    """Why our numbers sit below the paper's: its reporting, and the JPEG copy measured with real-data weights."""
    page: list[Block] = ["## Why our numbers sit below the paper's", ""]
    for g in groups:
        pr = paper_result(g.family or "", g.depth or 0, g.compare_to) if g.compare_to else None
        if pr is not None:
            s = g.stat("test_top1")
            page += [f"- {g.model} at the full protocol on {g.label}: {mean_sd(s)} (n={s.n}, final model), "
                     f"{pr.top1 - s.mean:.2f} points under the paper's {pr.top1:.2f}."]
    page += ["- The paper's numbers are single runs reported at their best test accuracy over all epochs: the released "
             "script trains one round (`--rounds 1`) and reports the best test accuracy it saw, a selection on the "
             "test set. Ours are the final model's accuracy.", ""]
    path = AKAMASTER_RESULTS
    rows: list[dict[str, Any]] = []
    if path.is_file():
        try:
            rows = list(json.loads(path.read_text()).get("results") or [])
        except (OSError, ValueError):
            rows = []
    if not rows:
        return page + [f"The data's share of the gap is not measured here yet: `{AKAMASTER_COMMAND}`.", ""]
    diffs = summarize([r["difference"] for r in rows])
    published = ", ".join(f"{r['published_cifar10_top1']:.2f}" for r in rows)
    page += [f"The data: akamaster's ResNets trained on the real CIFAR-10 (pytorch_resnet_cifar10, option-A "
             f"shortcuts), evaluated in fp32 on the 10,000 test images of the CIFAR-10 JPEG copy, score "
             f"{min(r['jpeg_test_top1'] for r in rows):.2f}–{max(r['jpeg_test_top1'] for r in rows):.2f}% against "
             f"their published {published}% on CIFAR-10: "
             f"{-diffs.mean:.1f} points lower on average. Weights trained on the original pixels lose that much on "
             f"the copy's compressed test images; our runs train and test on the copy, so the figure bounds the "
             f"data's effect rather than measuring it for them. Command (single-threaded, a few minutes): "
             f"`{AKAMASTER_COMMAND}`.", ""]
    page += table(["model", "JPEG copy test top-1 (%)", "published CIFAR-10 top-1 (%)", "difference"],
                  [[r["model"], f"{r['jpeg_test_top1']:.2f}", f"{r['published_cifar10_top1']:.2f}",
                    fmt_num(r["difference"], 2, True)] for r in rows]) + [""]
    return page


def write_findings(runs_dir: str | Path, out_md: str | Path, *, partial_dirs: Sequence[str | Path] = (),
                   schedule_dirs: Sequence[str | Path] = (), readme: str | Path | None = None,
                   figures: bool = True) -> Path:
    """Writes the findings page (and its figures in ``<out_md stem>/``); refreshes README's block if asked."""
    runs_dir, out_md = Path(runs_dir), Path(out_md)
    if readme is not None:  # before anything is written: a slip must not leave the README replaced by the page
        check_readme(Path(readme), out_md)
    runs, unfinished, problems = collect_runs(runs_dir)
    groups, others = _paper_groups(runs)
    fig_dir = out_md.with_suffix("")
    rel_fig = fig_dir.name
    schedules = [schedule_section(Path(s), fig_dir, rel_fig, figures) for s in schedule_dirs]
    full = contrasts(groups)
    page: list[Block] = [
        "# Findings: Res-SE-Net against ResNet and SE-ResNet", "",
        f"Generated from the run directories by `{_command(runs_dir, out_md, partial_dirs, schedule_dirs, readme)}`; "
        f"do not edit by hand. Accuracy is the final model's test top-1 (not the best-on-test number the paper's code "
        f"reports), on the data each table names. Arithmetic as each run's meta records it (full protocol: "
        f"{_precisions(groups)}); the shorter schedule's precision is in its name. ± is the SD over seeds; n = number "
        f"of seeds.", ""]
    if problems:
        page += ["Problems found while reading the runs:", ""] + [f"- {p}" for p in problems] + [""]
    page += _answer(schedules, full, groups)
    for s in schedules:
        page += s.page
    page += _full_protocol(groups, full, others, fig_dir, rel_fig, figures)
    page += _partial_section(partial_dirs)
    page += _gap(groups)
    page += ["## Still missing", ""]
    for s in schedules:
        page += s.missing
    page += missing_section(groups)
    if unfinished:
        page += [f"Unfinished run directories in `{runs_dir}`: "
                 + ", ".join(f"{d} ({p})" for d, p in unfinished) + ".", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_md, "\n".join(render(page)).rstrip() + "\n")
    if readme is not None:
        refresh_readme(Path(readme), groups, full, out_md, [b for s in schedules for b in s.readme])
    return out_md


def _partial_section(partial_dirs: Sequence[str | Path]) -> list[Block]:
    """Runs stopped before the end: test top-1 at the last iteration every run of a family reached."""
    page: list[Block] = []
    for pdir in map(Path, partial_dirs):
        for job in sorted(p for p in pdir.iterdir() if p.is_dir()) if pdir.is_dir() else []:
            curves: dict[str, list[list[dict[str, Any]]]] = {}
            for found in (RunDir(p) for p in sorted(job.iterdir())):
                if not found.metrics_file.is_file():
                    continue
                try:
                    recs = found.metrics()
                except OSError:
                    continue
                curves.setdefault(found.path.name.rsplit("-s", 1)[0], []).append(
                    [r for r in recs if r.get("kind") == "eval"])
            if not curves:
                continue
            last = min(max(r["iter"] for r in c) for cs in curves.values() for c in cs if c)
            rows = []
            for model, cs in curves.items():
                s = summarize([next(r["test_top1"] for r in c if r["iter"] == last) for c in cs
                               if any(r["iter"] == last for r in c)])
                rows.append([model, s.n, mean_sd(s)])
            page += [f"### `{job}`: stopped at iteration {last:,} of 64,000", "",
                     f"Test top-1 (%) at iteration {last:,} (learning rate still 0.1, before the schedule's drops), "
                     f"mean ± SD over seeds: not the protocol's result, and no ranking follows from it.", ""]
            page += table(["model", "n", f"test top-1 at {last:,}"], rows) + [""]
    if page:
        page = ["## GPU runs stopped before the end", "",
                "These GPU jobs hit their time limit; their checkpoints were not kept, so they cannot resume. "
                "Their metrics are kept as evidence of the fused engine and of the early training phase.", ""] + page
    return page


def _command(runs_dir: Path, out_md: Path, partial: Sequence[str | Path], schedules: Sequence[str | Path],
             readme: str | Path | None) -> str:
    cmd = f"ressenet report {runs_dir} --findings {out_md}"
    cmd += "".join(f" --partial {p}" for p in partial)
    cmd += "".join(f" --schedule {p}" for p in schedules)
    return cmd + (f" --readme {readme}" if readme else "")
