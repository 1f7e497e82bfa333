"""Experiments: grids of runs (one directory per model x dataset x seed) and the report beside the paper's tables.

    from ressenet.experiments import load_grid, expand_grid, run_grid, write_report
    cells = expand_grid(load_grid("quick"), "runs/quick")
    run_grid(cells)
    write_report("runs/quick", "reports/quick")
"""
from ressenet.experiments.cells import CellState, cell_state
from ressenet.experiments.gridspec import Cell, GridSpec, expand_grid, list_presets, load_grid
from ressenet.experiments.jobs import emit_commands, train_command
from ressenet.experiments.runner import GridResult, run_grid
from ressenet.experiments.report import write_report
from ressenet.experiments.runs import collect_runs

__all__ = [
    "Cell", "CellState", "GridResult", "GridSpec", "cell_state", "collect_runs", "emit_commands", "expand_grid",
    "list_presets", "load_grid", "run_grid", "train_command", "write_report",
]
