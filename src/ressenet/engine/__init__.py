"""Training engine: configuration, the training loop, checkpoints, evaluation, data-parallel helpers.

The public face; each name is imported from its module when first used (``import ressenet.engine`` stays cheap, and
the CLI's help never loads torch). Where things live:

* engine/config.py: the ``Config`` dataclasses and overrides; every option's CLI flag comes from it.
  engine/yamlfile.py: the one YAML reader.
* engine/train.py ``train`` (imported from there: ``ressenet.engine.train`` is the module): one run, its loop read
  top to bottom; engine/fused.py ``train_fused``: several runs of one depth together (engine/steppers.py: how).
* engine/setup.py: ``resolve_settings`` (device, precision, channels-last, compile, once), ``load_data``
  (``RunData``), the model. engine/run.py ``Run``: one run's objects, step, boundary work and summary.
* engine/rundir.py ``RunDir``: the run directory's files; engine/checkpoint.py: atomic writes, ``open_checkpoint``,
  ``restore_checkpoint``; engine/evaluation.py: evaluation and eval.
* engine/runfiles.py: one validated reader per run file (summary.json, metrics.jsonl, config.yaml): a damaged
  file is one ``RunFileError`` line naming the file and field.
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
