"""Parsers for ``ressenet grid``, ``ressenet report`` and ``ressenet reproduce``: they parse and call the library.

    ressenet grid PRESET --runs-dir DIR [--seeds 3] [--dry-run] [--gpus 0,1] [--jobs N|auto] [--emit-commands FILE]
    ressenet report RUNS_DIR --out REPORT_DIR
    ressenet reproduce PRESET [--runs-dir runs/PRESET] [--out reports/PRESET] [--emit-commands FILE]

Grid and reproduce accept the ``ressenet train`` options (all but --model, --seed and --out) and apply them to
every cell; precedence: the preset's values < ``--config FILE`` < flags and ``--set``. ``--dataset`` replaces the
preset's dataset axis.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any

from ressenet.engine.config import FUSED_MECHANISMS, ConfigError, flatten_config, read_config_file
from ressenet.experiments.cells import format_plan
from ressenet.experiments.findings import write_findings
from ressenet.experiments.gridspec import expand_grid, list_presets, load_grid
from ressenet.experiments.jobs import emit_commands, resolve_fuse
from ressenet.experiments.report import write_report
from ressenet.experiments.runner import GridResult, resolve_jobs, run_grid
from ressenet.options import add_train_options, train_overrides

__all__ = ["add_experiment_commands", "grid_overrides"]


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    """Register grid/report/reproduce on the top-level sub-parsers."""
    presets = ", ".join(list_presets())
    p = sub.add_parser("grid", help="run (or list, or emit) the cells of an experiment grid",
                       description="Run every unfinished cell of a grid as its own `ressenet train` process: finished "
                                   "cells are skipped, unfinished ones resumed.")
    p.add_argument("preset", help=f"a preset ({presets}) or the path of a grid YAML file")
    _add_grid_options(p)
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    add_train_options(p, with_model=False)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("report", help="tables beside the paper's, statistics and figures from run directories",
                       description="Read finished run directories (never trains) and write report.md, CSV files "
                                   "and figures.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run directories (searched recursively)")
    p.add_argument("--out", metavar="REPORT_DIR", default=None, help="default: reports/<name of RUNS_DIR>")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    p.add_argument("--findings", metavar="PAGE.md", default=None,
                   help="write the findings page instead of the report (only runs with the paper's protocol; figures "
                        "in a folder beside it), e.g. --findings docs/findings.md")
    p.add_argument("--partial", metavar="DIR", action="append", default=[],
                   help="with --findings: a folder of GPU jobs whose runs stopped before the end, shown as such "
                        "(repeatable)")
    p.add_argument("--schedule", metavar="DIR", action="append", default=[],
                   help="with --findings: a runs folder of a shorter schedule (e.g. results/compressed), reported in "
                        "its own section, labelled with its schedule (repeatable)")
    p.add_argument("--readme", metavar="README.md", default=None,
                   help="with --findings: refresh the summary between the README's findings markers")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run a grid, then write its report: one command",
                       description="`ressenet grid PRESET` then `ressenet report`. Re-running it resumes.")
    p.add_argument("preset", help=f"a preset ({presets}) or the path of a grid YAML file")
    _add_grid_options(p)
    p.add_argument("--out", metavar="REPORT_DIR", default=None, help="default: reports/<preset>")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    add_train_options(p, with_model=False)
    p.set_defaults(func=cmd_reproduce)


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid")
    g.add_argument("--runs-dir", metavar="DIR", default=None, help="one directory per cell (default: runs/<preset>)")
    g.add_argument("--seeds", default=None, metavar="N|LIST",
                   help="a count (3: seeds 0,1,2) or a list (0,4,7); default: the preset's (3 unless it says)")
    g.add_argument("--gpus", default=None, metavar="0,1,...",
                   help="GPU ids: one cell per GPU in parallel (CUDA_VISIBLE_DEVICES); default: one cell at a time")
    g.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="processes at once; auto (default): one per listed GPU, one on an unlisted GPU, and on the "
                        "CPU one single-threaded process per core; more than the GPUs share them")
    g.add_argument("--fuse", default="1", metavar="N|auto",
                   help="train compatible cells (same depth, dataset and protocol) together, at most N per process "
                        "(engine/fused.py); auto: 12 on a GPU, 1 on the CPU, where fusing gains nothing; default 1")
    g.add_argument("--fused-mechanism", default="auto", choices=FUSED_MECHANISMS,
                   help="with --fuse: how a job's members train together (see ressenet train --help); default auto")
    g.add_argument("--filter", default=None, metavar="GLOB",
                   help="only the cells whose name matches, e.g. '*-cifar10-*' or 'res_se_net*'")
    g.add_argument("--emit-commands", metavar="FILE", default=None,
                   help="write one `ressenet train` line per unfinished cell to FILE and a Slurm job-array script "
                        "beside it (FILE.slurm); run nothing, report nothing")


def grid_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides for every cell: the ``--config`` file's values, then the flags and ``--set`` (which win)."""
    out: dict[str, Any] = {}
    if getattr(args, "config", None):
        tree = read_config_file(args.config)
        out.update(flatten_config({k: v for k, v in tree.items() if k != "meta"}, str(args.config)))
    out.update(train_overrides(args))
    return out


def _cells(args: argparse.Namespace):
    spec = load_grid(args.preset)
    runs_dir = Path(args.runs_dir or Path("runs") / spec.name)
    cells = expand_grid(spec, runs_dir.absolute(), seeds=args.seeds, overrides=grid_overrides(args))
    if args.filter:
        pattern = args.filter if any(c in args.filter for c in "*?[") else f"*{args.filter}*"
        cells = [c for c in cells if fnmatch.fnmatchcase(c.name, pattern)]
        if not cells:
            raise ConfigError(f"--filter {args.filter!r} matches no cell of grid {spec.name!r}")
    return spec, runs_dir, cells


def _fuse(args: argparse.Namespace) -> int:
    """``--fuse N|auto`` as a member count; auto says what it chose and why."""
    value = str(getattr(args, "fuse", "1"))
    if value != "auto":
        return resolve_fuse(value, cuda=False)
    import torch

    cuda = bool(args.gpus) or torch.cuda.is_available()
    n = resolve_fuse("auto", cuda=cuda)
    print(f"--fuse auto: {n} member(s) per process " + (
        "(where an H200's aggregate images/s stopped rising: BENCHMARKS.md, \"Fused training\")" if cuda
        else "(no GPU: on the CPU members step one after another, so fusing gains nothing)"))
    return n


def _jobs(args: argparse.Namespace) -> int:
    """``--jobs N|auto`` as a process count; auto on the CPU says what it chose."""
    value = str(getattr(args, "jobs", "auto"))  # "" is a mistake, not auto: resolve_jobs names it
    gpus = _gpus(args.gpus) or []
    if value != "auto":
        return resolve_jobs(value, gpus=gpus, cuda=False)
    import torch

    cuda = bool(gpus) or torch.cuda.is_available()
    n = resolve_jobs("auto", gpus=gpus, cuda=cuda)
    if not cuda:
        print(f"--jobs auto: {n} single-threaded process(es), one per usable core")
    return n


def _gpus(text: str | None) -> list[str] | None:
    if not text:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise ConfigError(f"--gpus {text!r}: expected GPU ids such as 0,1,2,3")
    return gpus


def _run(args: argparse.Namespace) -> tuple[Any, Path, int | None, GridResult | None]:
    """Shared by grid and reproduce: dry run, emit, or run. Returns (spec, runs_dir, exit code or None, the
    ``GridResult`` or None when nothing ran)."""
    spec, runs_dir, cells = _cells(args)
    fuse = _fuse(args)
    if str(getattr(args, "jobs", "auto")) != "auto":  # checked before a dry run too: it lists what a run would do
        resolve_jobs(str(args.jobs), gpus=[], cuda=False)
    if args.dry_run:
        print(format_plan(spec, cells, runs_dir))
        return spec, runs_dir, 0, None
    if getattr(args, "emit_commands", None):
        path, script, conflicts = emit_commands(cells, args.emit_commands, job_name=f"ressenet-{spec.name}",
                                                log_dir=Path(runs_dir) / "slurm-logs", fuse=fuse,
                                                mechanism=args.fused_mechanism)
        n = sum(1 for _ in path.read_text().splitlines())
        print(f"wrote {n} command(s) to {path}" + (f" and a Slurm job array to {script} (sbatch {script})"
                                                    if script else " (nothing left to run)"))
        for c in conflicts:
            print(f"left out {c.name}: its directory holds another configuration", file=sys.stderr)
        return spec, runs_dir, 1 if conflicts else 0, None
    print(f"grid {spec.name!r}: {spec.description}" if spec.description else f"grid {spec.name!r}")
    result = run_grid(cells, gpus=_gpus(args.gpus), jobs=_jobs(args), fuse=fuse, mechanism=args.fused_mechanism)
    print(f"grid {spec.name!r}: {len(result.skipped)} already done, {len(result.succeeded)} finished now, "
          f"{len(result.failed)} failed, {len(result.conflicts)} in conflict"
          + (f", {len(result.elsewhere)} taken by another runner" if result.elsewhere else ""))
    errors = {result.errors.get(name, "") for name, _, _ in result.failed}
    alike = len(result.failed) > 1 and len(errors) == 1
    if alike:
        print(f"  all {len(result.failed)} failed cells: {errors.pop()}", file=sys.stderr)
    for name, rc, log in result.failed:
        why = "" if alike else f": {result.errors.get(name, '')}"
        print(f"  FAILED {name}: exit code {rc}{why}; log {log}", file=sys.stderr)
    for name, detail in result.conflicts:
        print(f"  CONFLICT {name}: {detail}", file=sys.stderr)
    if result.skipped and not result.succeeded and not result.failed:
        root = getattr(args, "data.data_root", None)
        print(f"note: every cell to run here was already finished, so nothing trained and the data"
              f"{f' at {root}' if root else ''} was not read (nor checked)")
    return spec, runs_dir, 0 if result.ok else 1, result


def cmd_grid(args: argparse.Namespace) -> int:
    """``ressenet grid``: runs (or lists, or emits) the unfinished cells; the exit code."""
    return _run(args)[2] or 0


def cmd_report(args: argparse.Namespace) -> int:
    """``ressenet report``: the report of a runs folder, or the findings page (and README block); the exit code."""
    if args.findings:
        page = write_findings(args.runs_dir, args.findings, partial_dirs=args.partial, schedule_dirs=args.schedule,
                              readme=args.readme, figures=args.figures)
        print(f"findings -> {page}" + (f" (and the summary in {args.readme})" if args.readme else ""))
        return 0
    if args.partial or args.readme or args.schedule:
        raise ConfigError("--partial, --schedule and --readme go with --findings PAGE.md")
    out = Path(args.out) if args.out else Path("reports") / Path(args.runs_dir).absolute().name
    res = write_report(args.runs_dir, out, figures=args.figures)
    print(f"report of {res.n_runs} finished run(s) ({res.n_unfinished} unfinished skipped) -> {res.report}")
    for p in res.problems:
        print(f"  warning: {p}", file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``ressenet reproduce``: the grid, then the report of what finished; the exit code."""
    spec, runs_dir, code, result = _run(args)
    if result is None:  # a dry run or emitted commands: nothing ran, so there is nothing new to report
        return code or 0
    out = Path(args.out) if args.out else Path("reports") / spec.name
    if not runs_dir.is_dir() or not (result.succeeded or result.skipped):
        print(f"no run of grid {spec.name!r} finished under {runs_dir}: no report written", file=sys.stderr)
        return code or 1
    kept = Path("results") / spec.name  # the same grid's runs kept in the repository, when run from its root
    kept_dir = kept if kept.is_dir() and kept.resolve() != runs_dir.resolve() else None
    res = write_report(runs_dir, out, figures=args.figures, kept_dir=kept_dir)
    print(f"report of {res.n_runs} finished run(s) -> {res.report}")
    if res.kept_summary:
        print(f"against {kept}: {res.kept_summary.replace('**', '')}")
    return code or 0
