"""What a grid's processes run: the ``ressenet train`` line of a cell, cells packed into fused jobs (one process
training several compatible cells, engine/fused.py), and the commands file plus Slurm job-array script of
``ressenet grid --emit``."""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ressenet.engine.config import Config, ConfigError, flatten_config
from ressenet.experiments.cells import cell_state
from ressenet.experiments.gridspec import AXIS_KEYS, Cell, value_text
from ressenet.files import atomic_write_text
from ressenet.models import model_info

__all__ = ["FLAG_KEYS", "FUSE_AUTO_CUDA", "Job", "train_command", "member_template", "resolve_fuse", "plan_jobs",
           "job_command", "emit_commands", "positive_count"]

# Keys passed as their own `ressenet train` flags; every other difference from the defaults goes through --set.
FLAG_KEYS = {"model.name": "--model", "data.dataset": "--dataset", "run.seed": "--seed", "run.out": "--out",
             "data.data_root": "--data-root"}
# `--fuse auto` on a CUDA device: members per fused job, where an H200's aggregate rate stopped rising
# (BENCHMARKS.md, "Fused training"). On the CPU fusing gains nothing (members step one after another): auto = 1.
FUSE_AUTO_CUDA = 12


# --------------------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------------------
def train_command(cell: Cell, program: Sequence[str] = ("ressenet",)) -> list[str]:
    """``ressenet train --model M --dataset D --seed S --out DIR [--data-root R] [--set k=v ...]``.

    Every config value that differs from the defaults (the paper's protocol) and has no flag of its own goes
    through ``--set``, so parsing the line with ``ressenet train``'s parser gives back ``cell.config``.
    """
    flat, default = flatten_config(cell.config), flatten_config(Config())
    argv = [*program, "train"]
    for key, flag in FLAG_KEYS.items():
        if key in ("model.name", "data.dataset", "run.seed", "run.out") or flat[key] != default[key]:
            argv += [flag, value_text(flat[key])]
    for key in sorted(flat):
        if key not in FLAG_KEYS and flat[key] != default[key]:
            argv += ["--set", f"{key}={value_text(flat[key])}"]
    return argv


# --------------------------------------------------------------------------------------------------------------
# Fused jobs: compatible cells trained together by one process (engine/fused.py)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What one process runs: one cell, or several compatible cells fused (same depth, dataset and protocol)."""

    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        first = self.cells[0].name
        return first if len(self.cells) == 1 else f"{first} + {len(self.cells) - 1} fused"


def member_template(cell: Cell) -> str:
    """The cell's directory name with its model and seed as placeholders: ``{model}-cifar10-s{seed}``."""
    middle = cell.name[len(cell.model) + 1:len(cell.name) - len(f"s{cell.seed}") - 1]
    return "{model}-" + middle + "-s{seed}"


def positive_count(value: int | str | None, flag: str, unit: str) -> int:
    """A flag's count (``--fuse 4``, ``--jobs 2``), at least one; anything else is a one-line error."""
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{flag} {value!r}: expected a positive number of {unit}, or auto")
    return n


def resolve_fuse(value: int | str, *, cuda: bool) -> int:
    """``--fuse``: a positive count, or ``auto`` (FUSE_AUTO_CUDA members on a GPU, 1 on the CPU)."""
    if value == "auto":
        return FUSE_AUTO_CUDA if cuda else 1
    return positive_count(value, "--fuse", "members per job")


def plan_jobs(cells: Sequence[Cell], fuse: int) -> list[Job]:
    """Packs cells into jobs of at most ``fuse`` members.

    Cells fuse when they share the depth, the dataset and every config value but model, seed and directory. A
    fused job is a product of models x seeds (what ``ressenet train --model a,b --seed 1,2`` expresses): seeds
    that miss the same models are packed together, as many seeds per job as ``fuse`` allows.
    """
    if fuse <= 1:
        return [Job((c,)) for c in cells]
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        info = model_info(c.model)
        shared = {k: v for k, v in flatten_config(c.config).items() if k not in AXIS_KEYS}
        key = (info.depth if info else c.model, member_template(c), tuple(sorted((k, repr(v)) for k, v in
                                                                            shared.items())))
        groups.setdefault(key, []).append(c)
    jobs: list[Job] = []
    for members in groups.values():
        by_seed: dict[int, list[Cell]] = {}
        for c in members:
            by_seed.setdefault(c.seed, []).append(c)
        by_models: dict[tuple[str, ...], list[int]] = {}
        for seed, cs in by_seed.items():
            by_models.setdefault(tuple(c.model for c in cs), []).append(seed)
        for models, seeds in by_models.items():
            lookup = {(c.model, c.seed): c for c in members}
            width = min(len(models), fuse)
            for i in range(0, len(models), width):
                chunk = models[i:i + width]
                per = max(1, fuse // len(chunk))
                for j in range(0, len(seeds), per):
                    jobs.append(Job(tuple(lookup[(m, s)] for s in seeds[j:j + per] for m in chunk)))
    return jobs


def job_command(job: Job, program: Sequence[str] = ("ressenet",), mechanism: str = "auto") -> list[str]:
    """One cell: :func:`train_command`. Several: ``ressenet train --model a,b --seed 1,2 --out RUNS_DIR
    --member-name '{model}-<dataset>-s{seed}'`` with the cells' shared flags (and ``--fused-mechanism`` unless
    ``mechanism`` is auto)."""
    first = job.cells[0]
    argv = train_command(first, program)
    if len(job.cells) == 1:
        return argv
    models = list(dict.fromkeys(c.model for c in job.cells))
    seeds = list(dict.fromkeys(c.seed for c in job.cells))
    values = {"--model": ",".join(models), "--seed": ",".join(map(str, seeds)), "--out": str(first.out.parent)}
    out = []
    it = iter(argv)
    for a in it:
        out.append(a)
        if a in values:
            next(it)
            out.append(values[a])
    return out + ["--member-name", member_template(first)] + \
        (["--fused-mechanism", mechanism] if mechanism != "auto" else [])


# --------------------------------------------------------------------------------------------------------------
# Emitting: a commands file and a Slurm job-array script
# --------------------------------------------------------------------------------------------------------------
def emit_commands(cells: Iterable[Cell], path: str | Path, *, job_name: str = "ressenet-grid",
                  log_dir: str | Path | None = None, fuse: int = 1,
                  mechanism: str = "auto") -> tuple[Path, Path | None, list[Cell]]:
    """Write one ``ressenet train`` line per unfinished cell, and a Slurm job-array script beside it.

    The script is ``path`` with the suffix ``.slurm``; array task ``i`` runs line ``i``. Cells whose directory
    holds another configuration are left out (and returned so the caller can warn). Returns (commands file,
    Slurm script or None when nothing is left to run, left-out conflicting cells).
    """
    path = Path(path)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,128}", job_name):  # sbatch reads the line; bash would run a newline's rest
        raise ConfigError(f"Slurm job name {job_name[:60]!r} is not safe in a script; use letters, digits and _.+-")
    script = path.with_suffix(".slurm") if path.suffix else path.with_name(path.name + ".slurm")
    for existing in (path, script):  # someone's file, or an earlier emit: never replaced silently
        if existing.exists() or existing.is_symlink():
            other = script.name if existing == path else path.name
            raise FileExistsError(f"{existing} exists; delete it (and {other}) to emit the commands again, or name "
                                  f"another file with --emit-commands")
    todo, conflicts = [], []
    for c in cells:
        st = cell_state(c)
        if st.runnable:
            todo.append(c)
        elif st.state == "conflict":
            conflicts.append(c)
    jobs = plan_jobs(todo, fuse)
    lines = [shlex.join(job_command(j, mechanism=mechanism)) for j in jobs]
    logs = Path(log_dir) if log_dir is not None else path.parent / "slurm-logs"
    # One command per line, and the script reads them by line number: a line break inside a value (a grid file's
    # string, a --runs-dir) would cut a command in two and leave its tail a line of its own, which a shell runs.
    for text, what in [(str(path.absolute()), "the commands file's path"), (str(logs.absolute()), "the log folder")] \
            + [(line, f"the command of {j.name}") for line, j in zip(lines, jobs)]:
        bad = next((i for i, ch in enumerate(text) if not ch.isprintable()), None)
        if bad is not None:
            raise ConfigError(f"{what} holds a line break or another control character "
                              f"(...{text[max(0, bad - 40):bad + 20]!r}...); a "
                              f"commands file holds one command per line: remove it from the grid file's values, "
                              f"--runs-dir or --emit-commands")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    if not todo:
        return path, None, conflicts
    logs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(script, _SLURM_TEMPLATE.format(
        n=len(jobs), job=job_name, logs=shlex.quote(str(logs.absolute())), commands=shlex.quote(str(path.absolute())),
        file=_comment_text(path.name), script=_comment_text(script.name)))
    return path, script, conflicts


def _comment_text(name: str) -> str:
    """A file name as text that stays inside one comment line of a script (no newline or control character)."""
    return "".join(ch if ch.isprintable() else "?" for ch in name)


_SLURM_TEMPLATE = """#!/bin/bash
# Slurm job array: task i runs line i of {file} (one `ressenet train` per unfinished grid cell or fused group
# of cells, {n} in all).
# Submit with `sbatch {script}` after adjusting partition, time and resources to your cluster. Each run resumes
# from its last.pt when requeued, and a finished run returns at once, so resubmitting the array is safe.
#SBATCH --job-name={job}
#SBATCH --array=1-{n}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --output={logs}/%x-%A_%a.out
#SBATCH --requeue
set -euo pipefail
# Activate the environment that has `ressenet` installed, e.g.: source ~/venvs/ressenet/bin/activate
LINE=$(sed -n "${{SLURM_ARRAY_TASK_ID}}p" {commands})
echo "task ${{SLURM_ARRAY_TASK_ID}}: $LINE"
eval "$LINE"
"""

