"""Experiment grids: a preset (or a user's YAML file) expands to cells, one run directory per cell.

The grids reproduce the tables of Varshaneya et al., "Res-SE-Net: Boosting Performance of Resnets by Enhancing
Bridge-connections" (arXiv:1902.06066) with several seeds. A cell is one ``ressenet train`` run, named from its
(model, dataset, overrides, seed), e.g. ``res_se_net44-cifar100-s2`` or ``resnet20-cifar10-val_split=5000-s0``.
Re-running a grid skips finished cells (``summary.json`` present) and resumes unfinished ones (the trainer resumes
from ``last.pt``). Cells run as separate processes: one at a time on CPU, one per listed GPU in parallel, or are
written out as ``ressenet train`` lines plus a Slurm job-array script.

A grid file (``presets/*.yaml`` are the shipped ones)::

    description: what it is and what it costs
    seeds: 3                        # default number of seeds (0..n-1) or an explicit list
    depths: [20, 32, 44, 56, 110]   # fills "{depth}" in model names
    models: ["resnet{depth}", "res_se_net{depth}"]
    datasets: [cifar10, cifar100]
    variants: [{}, {data.val_split: 5000}]   # optional: override sets, an extra axis (named in the run dirs)
    config:                         # applied to every cell, below command-line flags
      optim: {iters: 64000, milestones: [32000, 48000]}
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ressenet.engine.config import (RESULT_NEUTRAL_KEYS, Config, ConfigError, apply_overrides, diff_configs,
                                    flatten_config, load_yaml)
from ressenet.errors import RessenetError, quote
from ressenet.engine.lock import EXIT_LOCKED, PARENT_ENV, LockHeld, RunLock, lock_holder
from ressenet.engine.lock import describe as describe_holder
from ressenet.engine.rundir import missing_results
from ressenet.experiments.runs import last_iteration

__all__ = [
    "GridSpec", "Cell", "CellState", "GridResult", "PRESET_DIR", "list_presets", "load_grid", "parse_seeds",
    "expand_grid", "cell_state", "train_command", "run_grid", "emit_commands", "format_plan",
    "Job", "plan_jobs", "resolve_jobs", "usable_cores", "job_command", "resolve_fuse", "FUSE_AUTO_CUDA",
    "MAX_SEEDS", "MAX_CELLS",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
GRID_KEYS = frozenset({"name", "description", "seeds", "depths", "models", "datasets", "variants", "config"})
# Keys a grid sets per cell; a user override of these would make every cell the same run.
AXIS_KEYS = ("model.name", "run.seed", "run.out")
# Keys passed as their own `ressenet train` flags; every other difference from the defaults goes through --set.
FLAG_KEYS = {"model.name": "--model", "data.dataset": "--dataset", "run.seed": "--seed", "run.out": "--out",
             "data.data_root": "--data-root"}
MAX_TAG_CHARS = 80
# Sizes beyond any real study (the paper's grid is 40 cells a seed), refused before anything is built: a typo such as
# --seeds 100000000 would otherwise fill the memory listing cells.
MAX_SEEDS = 1_000
MAX_CELLS = 10_000
# `--fuse auto` on a CUDA device: members per fused job, where an H200's aggregate rate stopped rising
# (BENCHMARKS.md, "Fused training"). On the CPU fusing gains nothing (members step one after another): auto = 1.
FUSE_AUTO_CUDA = 12


# --------------------------------------------------------------------------------------------------------------
# Grid specification
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file. ``base`` and each variant are flat ``{"section.key": value}`` dicts."""

    name: str
    description: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    base: dict[str, Any] = field(default_factory=dict)
    variants: tuple[dict[str, Any], ...] = ({},)
    source: str = ""


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (``paper``, ``ablations``, ``quick``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_seeds(value: int | str | Sequence[int]) -> tuple[int, ...]:
    """``3`` or ``"3"`` -> (0, 1, 2); ``"0,4,7"`` or ``[0, 4, 7]`` -> (0, 4, 7); ``"12,"`` -> (12,)."""
    if isinstance(value, bool):
        raise ConfigError(f"seeds={quote(value)}: expected a count or a list of seeds")
    too_many = ConfigError(f"seeds={quote(value)}: more than {MAX_SEEDS:,} seeds; a grid takes at most "
                           f"{MAX_SEEDS:,} (run a few first: --seeds 3)")
    if isinstance(value, int):
        if value > MAX_SEEDS:
            raise too_many
        seeds: tuple[int, ...] = tuple(range(value))
    elif isinstance(value, str):
        text = value.strip()
        try:
            listed = [int(s) for s in text.split(",")[:MAX_SEEDS + 1] if s.strip()] if "," in text else None
            count = int(text) if listed is None else len(listed)
        except ValueError:
            raise ConfigError(f"--seeds {quote(value)}: expected a count (3) or a comma-separated list (0,1,2)") \
                from None
        if count > MAX_SEEDS:
            raise too_many
        seeds = tuple(range(count)) if listed is None else tuple(listed)
    else:
        if isinstance(value, Sized) and len(value) > MAX_SEEDS:
            raise too_many
        try:
            seeds = tuple(int(s) for s in value)
        except (TypeError, ValueError):
            raise ConfigError(f"seeds={quote(value)}: expected a count or a list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds={quote(value)}: expected at least one seed, no repeats, none negative")
    return seeds


def load_grid(preset: str | Path) -> GridSpec:
    """Load a shipped preset by name or a grid YAML file by path.

    Raises:
        ConfigError: unknown preset, unreadable file, or a malformed grid (the message names the fix).
    """
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown grid preset {str(preset)!r}; presets: {', '.join(list_presets())} "
                              f"(or pass the path of a grid YAML file)")
    if not path.is_file():
        raise ConfigError(f"grid file {path} not found")
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"), f"grid file {path}")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path} cannot be read as UTF-8 text ({type(e).__name__}); save it as UTF-8")\
            from None
    where = str(path)
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: a grid file holds a mapping with models, datasets, seeds, config")
    unknown = sorted(set(tree) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown grid key(s) {', '.join(unknown)}; valid: {', '.join(sorted(GRID_KEYS))}")
    models = _expand_models(tree.get("models"), tree.get("depths"), where)
    datasets = tree.get("datasets", ["cifar10"])
    if isinstance(datasets, str):
        datasets = [datasets]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise ConfigError(f"{where}: datasets must be a list of dataset names, e.g. [cifar10, cifar100]")
    variants = tree.get("variants") or [{}]
    if not isinstance(variants, list):
        raise ConfigError(f"{where}: variants must be a list of override mappings, "
                          f"e.g. [{{}}, {{data.val_split: 5000}}]")
    spec = GridSpec(
        name=str(tree.get("name") or path.stem),
        description=" ".join(str(tree.get("description", "")).split()),
        models=models,
        datasets=tuple(datasets),
        seeds=parse_seeds(tree.get("seeds", 3)),
        base=flatten_config(tree.get("config") or {}, f"{where}: config"),
        variants=tuple(flatten_config(v or {}, f"{where}: variants[{i}]") for i, v in enumerate(variants)),
        source=str(path),
    )
    for key in (*AXIS_KEYS, "data.dataset"):
        if key in spec.base or any(key in v for v in spec.variants):
            raise ConfigError(f"{where}: {key} is set by the grid's axes (models, datasets, seeds), not by config")
    _check_overrides(spec.base, where)
    for v in spec.variants:
        _check_overrides({**spec.base, **v}, where)
    return spec


def _expand_models(models: Any, depths: Any, where: str) -> tuple[str, ...]:
    from ressenet.models import is_model

    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{where}: models must be a list of registry names, e.g. [resnet20, 'res_se_net{{depth}}']")
    if depths is not None and (not isinstance(depths, list) or not all(isinstance(d, int) for d in depths)):
        raise ConfigError(f"{where}: depths must be a list of integers, e.g. [20, 32, 44, 56, 110]")
    names: list[str] = []
    # Depth-major order: the cells of the shallow (fast) nets come first, so a partial grid is already a table.
    for depth in depths or [None]:
        for m in models:
            if "{depth}" in str(m):
                if depth is None:
                    raise ConfigError(f"{where}: model {m!r} uses {{depth}} but the grid has no depths list")
                names.append(str(m).format(depth=depth))
            elif str(m) not in names:
                names.append(str(m))
    bad = [n for n in names if not is_model(n)]
    if bad:
        raise ConfigError(f"{where}: unknown model(s) {', '.join(bad)}; `ressenet models` lists the names")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: models repeat after filling in depths: {names}")
    return tuple(names)


def _check_overrides(flat: dict[str, Any], where: str) -> None:
    try:
        apply_overrides(Config(), dict(flat)).validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One run of a grid: the resolved config, its run directory and the overrides that name it."""

    name: str
    model: str
    dataset: str
    seed: int
    tags: tuple[tuple[str, Any], ...]  # (dotted key, value) pairs in the name, sorted by key
    config: Config

    @property
    def out(self) -> Path:
        return Path(self.config.run.out)  # type: ignore[arg-type]


def expand_grid(spec: GridSpec, runs_dir: str | Path, *, seeds: int | str | Sequence[int] | None = None,
                overrides: dict[str, Any] | None = None) -> list[Cell]:
    """All cells of a grid, seed-major (every cell of seed 0 first), then dataset, then model.

    Args:
        spec: the grid (``load_grid``).
        runs_dir: the folder holding one directory per cell.
        seeds: a count or list overriding the grid's default.
        overrides: ``{"section.key": value}`` from the command line (``--config`` file values first, then
            flags); they win over the grid's config. ``data.dataset`` replaces the grid's dataset axis.

    A cell is named ``{model}-{dataset}[-{key}={value}...]-s{seed}``: the tags are the variant's overrides and
    the user's overrides that change the grid's value and are not result-neutral (``data.data_root``,
    ``run.device`` and the like never enter the name), so the same command always maps to the same directories
    and a changed protocol never reuses another protocol's runs.

    Raises:
        ConfigError: a bad override, or overrides that make two cells share a name.
    """
    user = dict(overrides or {})
    for key in AXIS_KEYS:
        if key in user:
            raise ConfigError(f"{key} cannot be overridden for a whole grid: a grid sets it per cell "
                              f"(choose models in a grid file, seeds with --seeds)")
    datasets = spec.datasets
    if "data.dataset" in user:
        datasets = (str(user.pop("data.dataset")),)
    seed_list = spec.seeds if seeds is None else parse_seeds(seeds)
    n_cells = len(seed_list) * len(datasets) * len(spec.models) * len(spec.variants)
    if n_cells > MAX_CELLS:
        raise ConfigError(f"grid {spec.name!r} would have {n_cells:,} cells ({len(spec.models)} models x "
                          f"{len(datasets)} datasets x {len(spec.variants)} variants x {len(seed_list)} seeds), more "
                          f"than the {MAX_CELLS:,} a grid may hold; use fewer seeds or split the grid file")
    runs = Path(runs_dir)
    cells: list[Cell] = []
    for seed in seed_list:
        for dataset in datasets:
            for model in spec.models:
                for variant in spec.variants:
                    cells.append(_make_cell(spec, runs, model, dataset, seed, variant, user))
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.name in seen:
            raise ConfigError(f"two cells of grid {spec.name!r} share the name {c.name!r}: a command-line override "
                              f"probably replaces a variant's value; drop the override or the variant")
        seen[c.name] = c
    return cells


def _make_cell(spec: GridSpec, runs: Path, model: str, dataset: str, seed: int, variant: dict[str, Any],
               user: dict[str, Any]) -> Cell:
    axes = {"model.name": model, "data.dataset": dataset, "run.seed": seed}
    preset_cfg = apply_overrides(Config(), {**spec.base, **variant, **axes})
    cfg = apply_overrides(Config(), {**spec.base, **variant, **user, **axes}).validate()  # names before paths
    preset_flat, flat = flatten_config(preset_cfg), flatten_config(cfg)
    tag_keys = set(variant) | {k for k in user if flat[k] != preset_flat[k] and k not in RESULT_NEUTRAL_KEYS}
    tags = tuple((k, flat[k]) for k in sorted(tag_keys))
    name = "-".join([model, dataset, *_tag_strings(tags), f"s{seed}"])
    out = runs / name
    # Names come from a grid file anyone can write: every cell directory must lie inside the runs directory.
    if out.resolve().parent != runs.resolve() or "/" in name or name.startswith("."):
        raise ConfigError(f"cell name {name!r} would leave the runs directory {runs}; check the grid's models, "
                          f"datasets and variants")
    cfg.run.out = str(out)
    return Cell(name=name, model=model, dataset=dataset, seed=seed, tags=tags, config=cfg.validate())


def _leaf_names() -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in flatten_config(Config()):
        leaf = key.split(".")[1]
        counts[leaf] = counts.get(leaf, 0) + 1
    return counts


def _tag_strings(tags: tuple[tuple[str, Any], ...]) -> list[str]:
    if not tags:
        return []
    leaves = _leaf_names()
    out = []
    for key, value in tags:
        label = key.split(".")[1] if leaves.get(key.split(".")[1], 0) == 1 else key
        out.append(f"{label}={_safe(_value_text(value))}")
    if sum(len(t) + 1 for t in out) > MAX_TAG_CHARS:  # keep directory names readable: hash long override sets
        digest = hashlib.sha1(json.dumps([[k, v] for k, v in tags], sort_keys=True).encode()).hexdigest()[:10]
        return [f"cfg{digest}"]
    return out


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_value_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace(",", "_")).strip("_") or "_"


# --------------------------------------------------------------------------------------------------------------
# Cell state: done / partial / pending / conflict
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellState:
    state: str  # "done" | "partial" | "pending" | "conflict" | "running"
    detail: str = ""

    @property
    def runnable(self) -> bool:
        return self.state in ("pending", "partial")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _existing_config(out: Path, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is not None and isinstance(summary.get("config"), dict):
        return summary["config"]
    path = out / "config.yaml"
    if path.is_file():
        try:
            tree = load_yaml(path.read_text(encoding="utf-8"), str(path))
        except (OSError, ValueError):  # unreadable (ConfigError is a ValueError): the cell is reported as a conflict
            return None
        return tree if isinstance(tree, dict) else None
    return None


def _conflicts(cell: Cell, existing: dict[str, Any]) -> list[str]:
    """Result-relevant keys whose value in an existing run directory differs from the cell's.

    Keys the cell leaves to be resolved at run time (``None``, ``"auto"``) are not compared: the trainer writes
    the resolved value (e.g. ``model.num_classes: 10``) into the directory.
    """
    mine = cell.config.to_dict()
    try:
        keys = diff_configs(mine, existing)
    except ConfigError:
        return ["config.yaml (unreadable)"]
    flat = flatten_config(cell.config)
    return [k for k in keys if flat.get(k, "?") not in (None, "auto")]


def _fingerprint_for(cell: Cell, cache: dict[tuple, str | None]) -> str | None:
    """The content fingerprint of the data ``cell`` would train on (engine/setup.py), loaded once per data
    configuration; None when the data cannot be loaded here (then a finished cell is trusted as it is)."""
    from ressenet.engine.setup import load_data

    d = cell.config.data
    key = (d.dataset, d.data_root, d.cache_dir, d.train_limit, d.test_limit, d.val_split)
    if key not in cache:
        try:
            cache[key] = load_data(cell.config)["fingerprint"]
        except (ValueError, OSError, RessenetError):
            cache[key] = None
    return cache[key]


def cell_state(cell: Cell, fingerprints: dict[tuple, str | None] | None = None) -> CellState:
    """What a re-run would do with this cell's directory.

    ``done``: ``summary.json`` present with the same config (skipped); ``partial``: ``last.pt`` or
    ``metrics.jsonl`` without a summary (resumed); ``pending``: nothing yet; ``conflict``: the directory holds a
    run of another configuration (never touched; move it away or use another ``--runs-dir``); ``running``: another
    runner holds its lock (engine/lock.py; skipped here). With ``fingerprints`` (a cache the caller keeps), a
    finished run whose recorded data fingerprint differs from the data here is a conflict, not done.
    """
    out = cell.out
    summary_path = out / "summary.json"
    holder = lock_holder(out)
    if holder is not None and not summary_path.is_file():
        return CellState("running", f"trained by {describe_holder(holder)}")
    summary = _read_json(summary_path) if summary_path.is_file() else None
    if summary_path.is_file() and summary is None:
        return CellState("conflict", "summary.json is unreadable")
    if summary is not None and missing_results(summary):  # neither done (report skips it) nor resumable as it is
        return CellState("conflict", f"summary.json has no number for {', '.join(missing_results(summary))}; "
                                     f"delete it to finish the run from its last.pt")
    started = summary is not None or (out / "last.pt").is_file() or (out / "metrics.jsonl").is_file()
    existing = _existing_config(out, summary) if started or (out / "config.yaml").is_file() else None
    if existing is not None:
        bad = _conflicts(cell, existing)
        if bad:
            flat_old = {f"{s}.{k}": v for s, sec in existing.items() if isinstance(sec, dict) for k, v in sec.items()}
            flat_new = flatten_config(cell.config)
            shown = ", ".join(f"{k} (dir {flat_old.get(k)!r}, grid {flat_new.get(k)!r})" for k in bad[:3])
            return CellState("conflict", f"directory holds another config: {shown}{' ...' if len(bad) > 3 else ''}")
    if summary is not None:
        data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
        recorded = data.get("fingerprint")
        if recorded is not None and fingerprints is not None:
            here = _fingerprint_for(cell, fingerprints)
            if here is not None and here != recorded:
                return CellState("conflict", f"trained on other data (fingerprint {recorded}; the data here is "
                                             f"{here})")
        top1 = summary.get("test_top1")
        text = f"test top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else "finished"
        return CellState("done", f"{text} ({summary.get('iters', '?')} iterations)")
    if started:
        it = last_iteration(out)
        where = f"at iteration {it:,}/{cell.config.optim.iters:,}" if it is not None else "checkpoint present"
        return CellState("partial", f"{where}; resumes")
    return CellState("pending", "")


# --------------------------------------------------------------------------------------------------------------
# Commands
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
            argv += [flag, _value_text(flat[key])]
    for key in sorted(flat):
        if key not in FLAG_KEYS and flat[key] != default[key]:
            argv += ["--set", f"{key}={_value_text(flat[key])}"]
    return argv


def _default_command(cell: Cell) -> list[str]:
    return train_command(cell, program=(sys.executable, "-m", "ressenet"))


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


def resolve_fuse(value: int | str, *, cuda: bool) -> int:
    """``--fuse``: a positive count, or ``auto`` (FUSE_AUTO_CUDA members on a GPU, 1 on the CPU)."""
    if value == "auto":
        return FUSE_AUTO_CUDA if cuda else 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"--fuse {value!r}: expected a positive number of members per job, or auto")
    return n


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a cluster's scheduler or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def resolve_jobs(value: int | str | None, *, gpus: Sequence[str], cuda: bool) -> int:
    """``--jobs``: a positive count, or ``auto`` (the default): one per listed GPU; one on an unlisted GPU; on the
    CPU one single-threaded process per usable core, which trains more images/s in all than fewer processes with
    several threads each (BENCHMARKS.md, "CPU grids")."""
    if value is None or value == "auto":
        if gpus:
            return len(gpus)
        return 1 if cuda else usable_cores()
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"--jobs {value!r}: expected a positive number of cells at once, or auto")
    return n


def plan_jobs(cells: Sequence[Cell], fuse: int) -> list[Job]:
    """Packs cells into jobs of at most ``fuse`` members.

    Cells fuse when they share the depth, the dataset and every config value but model, seed and directory. A
    fused job is a product of models x seeds (what ``ressenet train --model a,b --seed 1,2`` expresses): seeds
    that miss the same models are packed together, as many seeds per job as ``fuse`` allows.
    """
    from ressenet.models import model_info

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


def _default_job_command(job: Job, mechanism: str = "auto") -> list[str]:
    return job_command(job, program=(sys.executable, "-m", "ressenet"), mechanism=mechanism)


def emit_commands(cells: Iterable[Cell], path: str | Path, *, job_name: str = "ressenet-grid",
                  log_dir: str | Path | None = None, fuse: int = 1,
                  mechanism: str = "auto") -> tuple[Path, Path | None, list[Cell]]:
    """Write one ``ressenet train`` line per unfinished cell, and a Slurm job-array script beside it.

    The script is ``path`` with the suffix ``.slurm``; array task ``i`` runs line ``i``. Cells whose directory
    holds another configuration are left out (and returned so the caller can warn). Returns (commands file,
    Slurm script or None when nothing is left to run, left-out conflicting cells).
    """
    path = Path(path)
    todo, conflicts = [], []
    for c in cells:
        st = cell_state(c)
        if st.runnable:
            todo.append(c)
        elif st.state == "conflict":
            conflicts.append(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(todo, fuse)
    path.write_text("".join(shlex.join(job_command(j, mechanism=mechanism)) + "\n" for j in jobs))
    if not todo:
        return path, None, conflicts
    script = path.with_suffix(".slurm") if path.suffix else path.with_name(path.name + ".slurm")
    logs = Path(log_dir) if log_dir is not None else path.parent / "slurm-logs"
    logs.mkdir(parents=True, exist_ok=True)
    script.write_text(_SLURM_TEMPLATE.format(
        n=len(jobs), job=job_name, logs=shlex.quote(str(logs.absolute())), commands=shlex.quote(str(path.absolute())),
        file=path.name))
    return path, script, conflicts


_SLURM_TEMPLATE = """#!/bin/bash
# Slurm job array: task i runs line i of {file} (one `ressenet train` per unfinished grid cell or fused group
# of cells, {n} in all).
# Submit with `sbatch {file}.slurm` after adjusting partition, time and resources to your cluster. Each run resumes
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


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GridResult:
    """What ``run_grid`` did: cells skipped (done), run successfully, failed (name, return code, log)."""

    skipped: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # locked by another runner: skipped here

    @property
    def ok(self) -> bool:
        return not self.failed and not self.conflicts


def run_grid(cells: Sequence[Cell], *, gpus: Sequence[str] | None = None, jobs: int | None = None,
             command: Callable[[Cell], list[str]] | None = None, echo: Callable[[str], None] = print,
             env: dict[str, str] | None = None, fuse: int = 1, mechanism: str = "auto",
             fused_command: Callable[[Job], list[str]] | None = None) -> GridResult:
    """Run the unfinished cells as separate processes and report each one's outcome.

    Args:
        cells: from ``expand_grid``.
        gpus: GPU ids; each process sees one through ``CUDA_VISIBLE_DEVICES``. None: no GPU pinning.
        jobs: processes at once (default: one per listed GPU, else 1; the CLI's ``--jobs auto`` is
            :func:`resolve_jobs`). With more jobs than GPUs they share GPUs round-robin; on CPU each of several jobs
            gets an equal share of the usable cores (``OMP_NUM_THREADS``), one thread each at one job per core.
        command: builds the argv of a cell (default ``python -m ressenet train ...``); tests pass a fake trainer.
        echo: where progress lines go.
        env: extra environment variables for every process.
        fuse: members per process: compatible unfinished cells are packed into fused jobs (:func:`plan_jobs`);
            1 runs every cell alone.
        mechanism: ``--fused-mechanism`` of the fused jobs (auto: the engine picks by device).
        fused_command: builds the argv of a fused job (default ``python -m ressenet train --model a,b ...``).

    A failing cell (non-zero exit, or exit 0 without ``summary.json``) is reported with its return code and log
    (``DIR/train.log``, appended to on each attempt) and the others go on. SIGINT (Ctrl-C) or SIGTERM is passed on
    to the running trainers, which checkpoint and exit; then the grid exits with 128 + the signal's number, and
    running the same command again resumes.
    """
    build = command or _default_command
    result = GridResult()
    todo: list[Cell] = []
    fingerprints: dict[tuple, str | None] = {}
    for c in cells:
        st = cell_state(c, fingerprints)
        if st.state == "done":
            result.skipped.append(c.name)
        elif st.state == "running":
            result.elsewhere.append(c.name)
            echo(f"skip      {c.name}: {st.detail}")
        elif st.state == "conflict":
            result.conflicts.append((c.name, st.detail))
            echo(f"conflict  {c.name}: {st.detail}; not run (move {c.out} away or use another --runs-dir)")
        else:
            todo.append(c)
    gpu_list = [str(g) for g in gpus] if gpus else []
    n_slots = max(1, jobs or len(gpu_list) or 1)
    echo(f"{len(cells)} cells: {len(result.skipped)} done, {len(todo)} to run"
         f"{f', {len(result.conflicts)} in conflict' if result.conflicts else ''}; "
         f"{n_slots} at a time{' on GPUs ' + ','.join(gpu_list) if gpu_list else ''}")
    if not todo:
        return result

    job_list = plan_jobs(todo, fuse)
    if fuse > 1:
        echo(f"fused: {len(todo)} cells in {len(job_list)} jobs of at most {fuse} members")
    build_job = fused_command or functools.partial(_default_job_command, mechanism=mechanism)

    base_env = {**os.environ, **(env or {})}
    if not gpu_list and n_slots > 1 and "OMP_NUM_THREADS" not in base_env:
        base_env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // n_slots))
    lock = threading.Lock()
    queue = list(enumerate(job_list, 1))
    procs: dict[int, subprocess.Popen] = {}
    stopping = threading.Event()

    def worker(slot: int) -> None:
        gpu = gpu_list[slot % len(gpu_list)] if gpu_list else None
        while not stopping.is_set():
            with lock:
                if not queue:
                    return
                index, job = queue.pop(0)
            _run_one(slot, gpu, index, job)

    def _run_one(slot: int, gpu: str | None, index: int, job: Job) -> None:
        # Take each cell's lock here, then look again: between the plan and now another runner may have taken or
        # finished a cell. The trainer inherits the locks (PARENT_ENV), so no other runner starts these cells.
        locks, mine = [], []
        for c in job.cells:
            lk = RunLock(c.out)
            try:
                lk.acquire()
            except LockHeld:
                with lock:
                    result.elsewhere.append(c.name)
                echo(f"[{index}/{len(job_list)}] skip {c.name}: taken by another runner")
                continue
            if cell_state(c).state == "done":
                lk.release()
                with lock:
                    result.skipped.append(c.name)
                continue
            locks.append(lk)
            mine.append(c)
        try:
            if mine:
                _launch(slot, gpu, index, Job(tuple(mine)) if len(mine) < len(job.cells) else job)
        finally:
            for lk in locks:
                lk.release()

    def _launch(slot: int, gpu: str | None, index: int, job: Job) -> None:
        cell = job.cells[0]
        argv = build(cell) if len(job.cells) == 1 else build_job(job)
        proc_env = dict(base_env)
        proc_env[PARENT_ENV] = str(os.getpid())
        if gpu is not None:
            proc_env["CUDA_VISIBLE_DEVICES"] = gpu
        for c in job.cells:
            c.out.mkdir(parents=True, exist_ok=True)
        log_path = cell.out / "train.log"
        for c in job.cells[1:]:  # one log per process: the first member's; the others point to it
            with (c.out / "train.log").open("a") as f:
                f.write(f"# ressenet grid: trained fused with {cell.name}; its log is {log_path}\n")
        where = f" on GPU {gpu}" if gpu is not None else ""
        echo(f"[{index}/{len(job_list)}] start {job.name}{where}")
        start = time.time()
        with log_path.open("a") as log:
            log.write(f"# ressenet grid {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      f"{f' CUDA_VISIBLE_DEVICES={gpu}' if gpu is not None else ''}: {shlex.join(argv)}\n")
            log.flush()
            with lock:  # a stop that came while this job was being prepared starts nothing
                if stopping.is_set():
                    return
                try:
                    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=proc_env,
                                            stdin=subprocess.DEVNULL)
                except OSError as e:
                    proc = None
                    error = e
                else:
                    procs[slot] = proc
            if proc is None:
                log.write(f"# could not start: {error}\n")
                with lock:
                    result.failed.extend((c.name, -1, str(log_path)) for c in job.cells)
                echo(f"[{index}/{len(job_list)}] FAILED {job.name}: could not start ({error}); log {log_path}")
                return
            rc = proc.wait()
            with lock:
                procs.pop(slot, None)
        seconds = time.time() - start
        for c in job.cells:
            _outcome(index, c, rc, seconds, log_path)

    def _outcome(index: int, cell: Cell, rc: int, seconds: float, log_path: Path) -> None:
        summary = _read_json(cell.out / "summary.json")
        if rc == 0 and summary is not None:
            top1 = summary.get("test_top1")
            score = f": test top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else ""
            with lock:
                result.succeeded.append(cell.name)
            echo(f"[{index}/{len(job_list)}] done {cell.name} in {seconds:.0f} s{score}")
        elif stopping.is_set():
            echo(f"[{index}/{len(job_list)}] interrupted {cell.name} after {seconds:.0f} s; re-run the grid to "
                 f"resume it")
        elif rc == EXIT_LOCKED:  # cannot happen while we hold the lock, unless it went stale under us
            with lock:
                result.elsewhere.append(cell.name)
            echo(f"[{index}/{len(job_list)}] skip {cell.name}: taken by another runner")
        else:
            why = f"exit code {rc}" if rc != 0 else "exit code 0 but no summary.json"
            with lock:
                result.failed.append((cell.name, rc if rc != 0 else 1, str(log_path)))
            echo(f"[{index}/{len(job_list)}] FAILED {cell.name} ({why}) after {seconds:.0f} s; log {log_path}")

    signals: list[int] = []

    def stop(signum: int, _frame: Any = None) -> None:
        # Pass the signal on and let the trainers end themselves: each finishes its step, saves last.pt and exits
        # (engine/train.py), holding its directory's lock until then, so a re-run resumes and no other runner
        # starts the cell meanwhile.
        signals.append(signum)
        with lock:
            stopping.set()
            running = list(procs.values())
        for p in running:
            try:
                p.send_signal(signum)
            except OSError:  # ended meanwhile
                pass

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(min(n_slots, len(job_list)))]
    with _signals_to(stop):
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except KeyboardInterrupt:  # no handler could be installed (not the main thread): stop and wait the same way
            stop(signal.SIGINT)
            for t in threads:
                t.join()
    if signals:
        name = signal.Signals(signals[0]).name
        echo(f"stopped by {name}: the running cells saved their checkpoints; run the same command to resume")
        raise SystemExit(128 + signals[0])
    result.failed.sort(key=lambda f: [c.name for c in cells].index(f[0]))
    return result


@contextlib.contextmanager
def _signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` for the block (main thread only: elsewhere Python cannot install one)."""
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# --------------------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------------------
def format_plan(spec: GridSpec, cells: Sequence[Cell], runs_dir: str | Path) -> str:
    """A dry-run listing: every cell with its state, then counts."""
    states = [cell_state(c) for c in cells]
    datasets = sorted({c.dataset for c in cells}, key=[c.dataset for c in cells].index)
    seeds = sorted({c.seed for c in cells})
    lines = [f"grid {spec.name!r} ({spec.source}): {len(cells)} cells = {len(spec.models)} models x "
             f"{len(datasets)} dataset(s) x {len(spec.variants)} variant(s) x {len(seeds)} seed(s) "
             f"({', '.join(map(str, seeds))}) in {runs_dir}"]
    if spec.description:
        lines.append(f"  {spec.description}")
    width = max((len(c.name) for c in cells), default=10)
    lines.append(f"  {'state':9} {'cell':{width}}  detail")
    for c, st in zip(cells, states):
        lines.append(f"  {st.state:9} {c.name:{width}}  {st.detail}".rstrip())
    counts = {s: sum(st.state == s for st in states) for s in ("done", "partial", "pending", "conflict")}
    lines.append(f"{counts['done']} done, {counts['partial']} partial, {counts['pending']} pending, "
                 f"{counts['conflict']} conflict: {counts['partial'] + counts['pending']} to run")
    return "\n".join(lines)
