"""Experiments: grids of runs (one directory per model x dataset x seed) and the report beside the paper's tables.

    from ressenet.experiments import load_grid, expand_grid, run_grid, write_report
    cells = expand_grid(load_grid("quick"), "runs/quick")
    run_grid(cells)
    write_report("runs/quick", "reports/quick")
"""
import importlib
from typing import Any

# Each public name is imported from its module when first used, so that the CLI (which registers `grid`, `report`
# and `reproduce`) does not load the report's statistics (scipy) for every `ressenet train`.
_PUBLIC = {
    "CellState": "cells", "cell_state": "cells",
    "Cell": "gridspec", "GridSpec": "gridspec", "expand_grid": "gridspec", "list_presets": "gridspec",
    "load_grid": "gridspec",
    "emit_commands": "jobs", "train_command": "jobs",
    "GridResult": "runner", "run_grid": "runner",
    "write_report": "report",
    "collect_runs": "runs",
}

__all__ = [
    "Cell", "CellState", "GridResult", "GridSpec", "cell_state", "collect_runs", "emit_commands", "expand_grid",
    "list_presets", "load_grid", "run_grid", "train_command", "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"ressenet.experiments.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'ressenet.experiments' has no attribute {name!r}")
