"""Training engine: configuration, the training loop, checkpoints, evaluation, data-parallel helpers.

The public face; each name is imported from its module when first used. Which module holds what: the one map,
docs/design.md section 7.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Config": "config", "load_config": "config", "config_from_dict": "config",
    "train_fused": "fused", "fused_configs": "fused", "FusedGroup": "fused",
    "run_group": "fused", "Stepper": "steppers", "Sequential": "steppers",
    "Run": "run", "TrainState": "run", "NonFiniteLoss": "run", "lr_at": "run", "train_step": "run",
    "RunDir": "rundir", "open_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "evaluate": "evaluation", "evaluate_checkpoint": "evaluation", "evaluate_weights": "evaluation",
    "build_model": "setup", "load_data": "setup", "RunData": "setup", "Settings": "setup",
    "resolve_settings": "setup", "restore_checkpoint": "checkpoint", "resolve_device": "setup",
    "resolve_precision": "setup",
    "resolve_compile": "setup", "autocast_context": "setup",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"ressenet.engine.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'ressenet.engine' has no attribute {name!r}")
