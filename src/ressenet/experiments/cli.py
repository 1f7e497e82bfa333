"""Parsers for `ressenet grid`, `report` and `reproduce` (placeholder until the experiments land)."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def add_experiment_commands(sub: argparse._SubParsersAction, add_train_options: Callable) -> None:
    """Register grid/report/reproduce on the top-level sub-parsers."""
