"""Experiment grids: a preset (or a user's YAML file) expands to cells, one run directory per cell.

The grids reproduce the tables of Varshaneya et al., "Res-SE-Net: Boosting Performance of Resnets by Enhancing
Bridge-connections" (arXiv:1902.06066) with several seeds. A cell is one ``ressenet train`` run, named from its
(model, dataset, overrides, seed), e.g. ``res_se_net44-cifar100-s2`` or ``resnet20-cifar10-val_split=5000-s0``.
Re-running a grid skips finished cells (``summary.json`` present) and resumes unfinished ones (the trainer resumes
from ``last.pt``). Cells run as separate processes: one at a time on CPU, one per listed GPU in parallel, or are
written out as ``ressenet train`` lines plus a Slurm job-array script.

This module is the specification: grid files, their expansion into cells and the cells' names. What a re-run would
do with a cell's directory is cells.py; command lines, fused packing and the Slurm script are jobs.py; running the
processes is runner.py.

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

import hashlib
import json
import os
import re
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ressenet.engine.config import RESULT_NEUTRAL_KEYS, Config, ConfigError, apply_overrides, flatten_config
from ressenet.engine.yamlfile import load_yaml
from ressenet.errors import quote
from ressenet.models import is_model

__all__ = ["GridSpec", "Cell", "PRESET_DIR", "AXIS_KEYS", "MAX_SEEDS", "MAX_CELLS", "list_presets", "load_grid",
           "parse_seeds", "expand_grid", "value_text", "check_grid_name"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
GRID_KEYS = frozenset({"name", "description", "seeds", "depths", "models", "datasets", "variants", "config"})
# Keys a grid sets per cell; a user override of these would make every cell the same run.
AXIS_KEYS = ("model.name", "run.seed", "run.out")
MAX_TAG_CHARS = 80
# Sizes beyond any real study (the paper's grid is 40 cells a seed), refused before anything is built: a typo such as
# --seeds 100000000 would otherwise fill the memory listing cells.
MAX_SEEDS = 1_000
MAX_CELLS = 10_000
# A grid's name becomes the default runs/<name> and reports/<name> folders and the Slurm job's name: a name from a
# file anyone can write must be one path component that no shell or path can read as anything else.
GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


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
    """Names of the presets shipped with the package (``paper``, ``ablations``, ``quick``, ``compressed``, ...)."""
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
    if not seeds and str(value).strip() == "0":  # a count of none: the user almost surely meant seed 0
        raise ConfigError(f"seeds={quote(value)}: a single number is a count (3: seeds 0, 1, 2), and 0 seeds run "
                          f"nothing; for seed 0 alone pass the list --seeds 0, (or --seeds 1)")
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
        name=check_grid_name(tree.get("name") or path.stem, where),
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


def check_grid_name(name: Any, where: str) -> str:
    """``name`` when it is a safe grid name (letters, digits, ``_.+-``, no ``..``), else one line naming the fix."""
    text = str(name)
    if not GRID_NAME.fullmatch(text) or ".." in text:
        raise ConfigError(f"{where}: grid name {text[:60]!r} is not a safe name (letters, digits and _.+- only, "
                          f"starting with a letter or digit, at most 100 characters); it names the runs/ and "
                          f"reports/ folders and the Slurm job, so rename it, e.g. name: my_grid")
    return text


def _expand_models(models: Any, depths: Any, where: str) -> tuple[str, ...]:
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
# Cells and their names
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
    # Names come from a grid file anyone can write: every cell directory must lie inside the runs directory. The
    # name decides that, not where the path resolves to: a cell folder that is a symbolic link is that cell's
    # conflict (experiments/cells.py), not the grid's.
    if "/" in name or os.sep in name or name.startswith("."):
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
        out.append(f"{label}={_safe(value_text(value))}")
    if sum(len(t) + 1 for t in out) > MAX_TAG_CHARS:  # keep directory names readable: hash long override sets
        digest = hashlib.sha1(json.dumps([[k, v] for k, v in tags], sort_keys=True).encode()).hexdigest()[:10]
        return [f"cfg{digest}"]
    return out


def value_text(value: Any) -> str:
    """A config value as a command line and a run name spell it: ``none``, ``true``, ``a,b`` for a list."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace(",", "_")).strip("_") or "_"
