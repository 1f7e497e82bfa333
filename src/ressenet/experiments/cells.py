"""The state of a grid's cells: what a re-run would do with each cell's directory (done, partial, pending, conflict,
running), and the dry-run listing of a grid built from it."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ressenet.engine.config import ConfigError, diff_configs, flatten_config
from ressenet.engine.lock import describe as describe_holder, lock_holder
from ressenet.engine.rundir import RunDir
from ressenet.engine.runfiles import RunFileError
from ressenet.engine.setup import load_data
from ressenet.errors import RessenetError, not_a_folder
from ressenet.experiments.gridspec import Cell, GridSpec
from ressenet.experiments.runs import last_iteration

__all__ = ["CellState", "cell_state", "format_plan", "read_json_object"]


# --------------------------------------------------------------------------------------------------------------
# Cell state: done / partial / pending / conflict
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellState:
    """What a grid cell's directory holds now, and why (``detail``), as ``grid --dry-run`` lists it."""

    state: str  # "done" | "partial" | "pending" | "conflict" | "running"
    detail: str = ""

    @property
    def runnable(self) -> bool:
        return self.state in ("pending", "partial")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _existing_config(out: Path, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config a cell's directory records (its summary's, else config.yaml's); RunFileError when torn."""
    if summary is not None and isinstance(summary.get("config"), dict):
        return summary["config"]
    return RunDir(out).read_config()


def _not_a_run_dir(out: Path) -> str | None:
    """Why ``out`` cannot be a cell's run directory (a file, a link, a file above it), or None."""
    if out.is_symlink():
        return f"{out} is a symbolic link; the grid writes only into real folders under --runs-dir: replace the link"
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a run directory; move it away"
    blocked = not_a_folder(out, "--runs-dir")
    if blocked is not None:
        return str(blocked)
    run = RunDir(out)
    for path in (run.config_file, run.metrics_file, run.summary_file, run.last):
        if (path.exists() or path.is_symlink()) and not path.is_file():  # a FIFO would block the trainer
            return f"{path} is not a regular file (a FIFO, device or folder); move it away"
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
    d = cell.config.data
    key = (d.dataset, d.data_root, d.cache_dir, d.train_limit, d.test_limit, d.val_split)
    if key not in cache:
        try:
            cache[key] = load_data(cell.config).fingerprint
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
    run = RunDir(out)
    why = _not_a_run_dir(out)
    if why is not None:
        return CellState("conflict", why)
    summary_path = run.summary_file
    holder = lock_holder(out)
    if holder is not None and not summary_path.is_file():
        return CellState("running", f"trained by {describe_holder(holder)}")
    # A damaged summary or a torn config.yaml is neither done (report skips it) nor resumable as it is: the trainer
    # would refuse it, so the listing says conflict with the reader's line, not pending.
    try:
        summary = run.read_summary()
        started = run.started()
        existing = _existing_config(out, summary) if started or run.config_file.exists() else None
    except RunFileError as e:
        return CellState("conflict", str(e))
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
        where = f"logged to iteration {it:,}/{cell.config.optim.iters:,}" if it is not None else "checkpoint present"
        # Without last.pt the trainer starts the run again from iteration 0 (and rewrites its metrics): say so.
        how = "resumes from last.pt" if run.last.is_file() else "no last.pt: starts again from iteration 0"
        return CellState("partial", f"{where}; {how}")
    return CellState("pending", "")


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
