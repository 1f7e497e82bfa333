"""The findings page's section for a shorter schedule (the ``compressed`` grid's runs folder).

Per protocol found in the folder: the table of final accuracies with the paper's printed numbers beside them, the
primary test named before any difference, the differences against depth (figure), every comparison Holm-adjusted
together, one sentence per comparison saying what its interval excludes, the per-seed values behind the pairs, the
provenance of the runs (from each run's ``config.yaml`` meta), the curves, and which planned runs are missing.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ressenet.engine.config import Config
from ressenet.experiments.contrasts import (PRIMARY_TEST, Contrast, contrast_table, contrasts, interval_sentence,
                                            mean_sd, seed_values, table, title_of, verdict_table)
from ressenet.experiments.gridspec import list_presets, load_grid
from ressenet.experiments.paper import paper_result
from ressenet.experiments.readme_block import rel
from ressenet.experiments.runs import (FinishedRun, Group, collect_runs, family_order, group_runs, parse_model,
                                       protocol_text)
from ressenet.experiments.tables import Block, slug

__all__ = ["ScheduleSection", "schedule_section", "schedule_text", "seed_ranges", "provenance", "planned_runs"]

DEPTH_FIGURE = (("res_se_net", "resnet"), ("resnet_nobridge", "resnet"))  # (a, b) drawn against depth


def planned_runs(runs_dir: Path) -> dict[str, tuple[int, ...]]:
    """The seeds of each model a shorter-schedule folder is meant to hold, read from the presets that train into it:
    the preset of its name and those named ``<name>-...`` (``compressed``, ``compressed-ablations``,
    ``compressed-depth56`` all go into ``results/compressed`` so that every comparison pairs by seed)."""
    plan: dict[str, tuple[int, ...]] = {}
    for name in list_presets():
        if name == runs_dir.name or name.startswith(f"{runs_dir.name}-"):
            spec = load_grid(name)
            for m in spec.models:
                plan[m] = tuple(sorted(set(plan.get(m, ())) | set(spec.seeds)))
    return plan


@dataclass
class ScheduleSection:
    """What one shorter-schedule folder contributes to the page, the README and the summary at the top."""

    page: list[Block] = field(default_factory=list)
    readme: list[Block] = field(default_factory=list)
    missing: list[Block] = field(default_factory=list)
    contrasts: list[Contrast] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


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


def seed_ranges(seeds: Iterable[int]) -> str:
    """``s0-s2, s4``: seeds as runs of consecutive numbers."""
    spans: list[list[int]] = []
    for s in sorted(set(seeds)):
        if spans and spans[-1][1] == s - 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(f"s{a}" if a == b else f"s{a}-s{b}" for a, b in spans)


def _by_model(runs: Iterable[FinishedRun]) -> str:
    models: dict[str, list[int]] = {}
    for r in runs:
        models.setdefault(r.model, []).append(r.seed if r.seed is not None else -1)
    return "; ".join(f"{m} {seed_ranges(s)}" for m, s in sorted(models.items()))


def provenance(runs: list[FinishedRun]) -> list[Block]:
    """One line per distinct machine setting recorded in the runs' meta (CPU, threads, precision, torch build)."""
    kinds: dict[tuple[str, str, str, str], list[FinishedRun]] = {}
    for r in runs:
        m = r.meta
        cpu = m.get("cpu") or m.get("cpu_model")
        if str(m.get("device", "")).startswith("cuda"):
            cpu_text = f"GPU {m.get('device_name', '?')}"
        else:
            cpu_text = f"CPU {cpu}" if cpu else f"CPU model not recorded (device {m.get('device', '?')}, host " \
                                                 f"{m.get('host', '?')})"
        threads = m.get("threads")
        key = (cpu_text, f"{threads} thread{'s' if threads != 1 else ''} per process" if threads else "threads not "
               "recorded", str(m.get("precision", "precision not recorded")), f"torch {m.get('torch', '?')}")
        kinds.setdefault(key, []).append(r)
    page: list[Block] = ["Provenance, from each run's `config.yaml` meta (one line per distinct setting):", ""]
    page += [f"- {', '.join(k)}: {_by_model(rs)}." for k, rs in sorted(kinds.items(), key=lambda kv: kv[0][3])]
    builds = sorted({r.meta.get("torch", "?") for r in runs})
    page += [""]
    if len(builds) > 1:
        page += [f"The runs mix {len(builds)} torch builds ({', '.join(builds)}); runs differing only in the build "
                 f"are pooled, and a pair of seeds may straddle two builds."]
    if not any(r.meta.get("cpu") or r.meta.get("cpu_model") or str(r.meta.get("device", "")).startswith("cuda")
               for r in runs):
        page += ["The meta records neither the CPU model nor whether a run was resumed on another machine, so which "
                 "processor ran which part of a run cannot be told from the run directories."]
    return page + [""]


def _main_table(gs: list[Group]) -> list[Block]:
    rows = []
    for g in gs:
        pr = paper_result(g.family or "", g.depth or 0, g.compare_to) if g.compare_to else None
        rows.append([title_of(g.family), g.depth, g.n, mean_sd(g.stat("test_top1")),
                     mean_sd(g.stat("test_top5")), f"{pr.top1:.2f} ({pr.source.split(' ')[0]})" if pr else "–"])
    return table(["family", "depth", "n", "ours: final test top-1 (%)", "ours: final test top-5 (%)",
                  "paper: top-1 (%), 64,000 iterations"], rows)


def _seed_table(gs: list[Group]) -> list[Block]:
    seeds = sorted({s for g in gs for s in seed_values(g)})
    rows = [[g.model] + [f"{v:.2f}" if (v := seed_values(g).get(s)) is not None else "–" for s in seeds] for g in gs]
    return ["Final test top-1 (%) of every run, by seed (the pairs behind the paired tests):", ""] + \
        table(["model"] + [f"seed {s}" for s in seeds], rows) + [""]


def _absent_depths(runs_dir: Path, groups: list[Group]) -> list[Block]:
    """A line naming the planned depths of this folder with no finished run yet (the figure shows them later)."""
    plan = planned_runs(runs_dir)
    have = {g.depth for g in groups}
    absent: dict[int, list[str]] = {}
    for m in plan:
        depth = parse_model(m)[1]
        if depth is not None and depth not in have:
            absent.setdefault(depth, []).append(m)
    return [f"Depth {d}: no finished run yet (planned: {', '.join(ms)}); its rows, pairs and points in the figure "
            f"appear when they exist." for d, ms in sorted(absent.items())] + ([""] if absent else [])


def _missing(runs_dir: Path, present: set[tuple[str, int]]) -> list[Block]:
    plan = planned_runs(runs_dir)
    if not plan:
        return []
    size = f"{len(plan)} models, {sum(len(s) for s in plan.values())} runs, from the presets that train into it"
    lacking = {m: [s for s in seeds if (m, s) not in present] for m, seeds in plan.items()}
    lacking = {m: s for m, s in lacking.items() if s}
    if not lacking:
        return [f"Every planned run of `{runs_dir}` ({size}) has finished.", ""]
    return [f"Planned for `{runs_dir}` ({size}) and not finished yet: "
            + "; ".join(f"{m} {seed_ranges(s)}" for m, s in lacking.items()) + ".", ""]


def _figures(groups: list[Group], cs: list[Contrast], fig_dir: Path, rel_fig: str, name: str,
             sched: str) -> tuple[list[Block], list[Block]]:
    """(depth figure, curves) as page blocks."""
    # Matplotlib loads only when figures are drawn
    from ressenet.experiments.figures import plot_curves, plot_differences, plot_train_loss

    fig_dir.mkdir(parents=True, exist_ok=True)
    depth, curves = [], []
    drawn = [c for c in cs if (c.family_a, c.family_b) in DEPTH_FIGURE]
    if drawn and plot_differences(drawn, fig_dir / f"differences_{name}.png", "Paired differences against depth"):
        cap = (f"Res-SE-Net minus ResNet and no-bridge minus ResNet at each depth, {sched}: mean paired difference "
               f"with its per-comparison 95% interval (ours); hollow diamonds: the paper's printed differences "
               f"(single best-on-test runs of 64,000 iterations)")
        depth.append(f"![{cap}]({rel_fig}/differences_{name}.png)\n\n{cap}.\n")
    if plot_curves(groups, fig_dir / f"test_top1_{name}.png", f"Test top-1 — {sched}", "test_top1", "eval",
                   "test top-1 (%)"):
        cap = f"Test top-1 against iteration, {sched} (mean over seeds; faint: single seeds)"
        curves.append(f"![{cap}]({rel_fig}/test_top1_{name}.png)\n\n{cap}.\n")
    if plot_train_loss(groups, fig_dir / f"train_loss_{name}.png", f"Training loss — {sched}"):
        cap = f"Training loss against iteration, {sched} (mean over seeds; faint: single seeds)"
        curves.append(f"![{cap}]({rel_fig}/train_loss_{name}.png)\n\n{cap}.\n")
    return depth, curves


def schedule_section(runs_dir: Path, fig_dir: Path, rel_fig: str, figures: bool) -> ScheduleSection:
    """A runs folder of a shorter schedule: every number labelled with the data, the schedule and the seeds."""
    runs, unfinished, problems = collect_runs(runs_dir)
    paper = [r for r in runs if r.compare_to is not None]
    by_protocol: dict[tuple, list[FinishedRun]] = {}
    for r in paper:
        by_protocol.setdefault(r.protocol, []).append(r)
    out = ScheduleSection()
    for i, (protocol, rs) in enumerate(sorted(by_protocol.items(), key=lambda kv: -len(kv[1]))):
        groups = sorted(group_runs(rs).values(), key=lambda g: (g.label, g.depth or 0, family_order(g.family)))
        sched = schedule_text(protocol)
        name = slug(runs_dir.name) + ("" if len(by_protocol) == 1 else f"_{i + 1}")
        cs = contrasts(groups)
        out.contrasts += cs
        out.page += [f"## {sched[0].upper() + sched[1:]}: `{runs_dir}`", ""]
        out.page += [f"Final-model test top-1 (%) of the runs in `{runs_dir}`, trained with the {sched}; ours: mean ± "
                     f"SD over seeds, n = number of seeds (one seed: the value alone). The paper's column is its "
                     f"printed number for the 64,000-iteration protocol (a single run's best test accuracy over all "
                     f"epochs; SE-ResNet's is derived from the paper's improvement table), so it is a reference, "
                     f"not a target this schedule should reach.", ""]
        out.page += [f"Problems found while reading the runs: {'; '.join(problems)}.", ""] if problems else []
        depth_fig, curves = _figures(groups, cs, fig_dir, rel_fig, name, sched) if figures else ([], [])
        for label in sorted({g.label for g in groups}):
            gs = [g for g in groups if g.label == label]
            n_all = sorted({g.n for g in gs})
            tag = f"{label}, {sched}, n = " + (f"{n_all[0]}–{n_all[-1]}" if len(n_all) > 1 else str(n_all[0]))
            out.tags.append(tag)
            mine = [c for c in cs if c.label == label]
            out.page += [f"**{tag}**:", ""] + _main_table(gs) + [""] + _absent_depths(runs_dir, gs)
            out.page += [PRIMARY_TEST, ""] + depth_fig
            if mine:
                out.page += contrast_table(mine) + [""]
                out.page += ["What each paired interval says:", ""]
                out.page += [f"- {interval_sentence(c)}." for c in mine] + [""]
            out.page += _seed_table(gs)
            out.readme += [f"**{tag}** (from [`{runs_dir}`]({runs_dir})):"]
            # The README keeps the depth comparisons and each ablation against Res-SE-Net; the page has the rest.
            key = [c for c in mine if (c.family_a, c.family_b) in DEPTH_FIGURE or c.family_b == "res_se_net"]
            holm_over = sum(c.tested for c in mine) if len(key) < len(mine) else None
            out.readme += [""] + verdict_table(key, tag, holm_over) + [""]
        out.page += provenance(rs) + curves
    analysis = fig_dir.parent / f"analysis-{runs_dir.name}" / "analysis.md"
    if by_protocol and analysis.is_file():
        # Written by `ressenet analyze` (it trains nothing, and takes minutes per run), kept beside this page.
        out.page += [f"What the SE blocks of these runs learned (gate statistics, class selectivity, reliance): "
                     f"[{analysis.parent.name}/analysis.md]({analysis.parent.name}/analysis.md), written by "
                     f"`ressenet analyze RUN_DIR ... --out {rel(analysis.parent, Path.cwd())}` from the runs that "
                     f"kept a `last.pt` (listed there).", ""]
    if not by_protocol:
        out.page += [f"## `{runs_dir}`", "", "No finished run there yet.", ""]
    out.missing += _missing(runs_dir, {(r.model, r.seed) for r in paper if r.seed is not None})
    if unfinished:
        out.missing += [f"Still training or stopped in `{runs_dir}` (they resume with the same `ressenet grid` "
                        f"command): " + ", ".join(f"{d} ({p})" for d, p in unfinished) + ".", ""]
    return out
