"""What the SE blocks of a trained run learned, and how much the network relies on them (``ressenet analyze``).

``analyze(run_dirs, out_dir)`` takes any checkpoint the engine wrote (any family, depth or ablation) and writes
``analysis.md`` with CSVs and figures: gate statistics over the test set (per block, class and channel), reliance
(test top-1 with gates replaced at inference, against the intact network, McNemar's exact test) and aggregates over
seeds. The page's "Definitions and methods" section (analysis/prose.py) states each method. Modules: ``sites``,
``hooks`` (reading and replacing gates), ``gates``, ``inputs``, ``reliance`` (one run), ``pipeline``, ``summary``
(over seeds), ``render`` and ``prose`` (the page), ``figures``, ``cli``.
"""
from __future__ import annotations

import importlib
from typing import Any

# Each public name is imported from its module when first used, so that the CLI (which registers `analyze`) does
# not load the statistics (scipy) for every `ressenet train`.
_PUBLIC = {
    "add_parser": "cli", "cmd_analyze": "cli",
    "CONSTANT_STD": "gates", "HIST_BINS": "gates", "QUANTILES": "gates", "GateAccumulator": "gates",
    "GateStats": "gates", "hist_quantiles": "gates",
    "gate_override": "hooks", "record_gates": "hooks",
    "analyze": "pipeline",
    "RelianceRow": "reliance", "RunAnalysis": "reliance", "analyze_run": "reliance",
    "write_outputs": "render",
    "SESite": "sites", "se_modules": "sites", "se_sites_of": "sites",
}
_STATS = ("PairedDrop", "paired_drop")  # re-exported from ressenet.experiments.stats

__all__ = ["analyze", "add_parser", "cmd_analyze", "SESite", "se_modules", "se_sites_of", "gate_override",
           "record_gates", "GateAccumulator", "GateStats", "hist_quantiles", "PairedDrop", "paired_drop",
           "RunAnalysis", "analyze_run", "RelianceRow", "write_outputs", "CONSTANT_STD", "HIST_BINS", "QUANTILES"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"ressenet.analysis.{_PUBLIC[name]}"), name)
    if name in _STATS:
        return getattr(importlib.import_module("ressenet.experiments.stats"), name)
    raise AttributeError(f"module 'ressenet.analysis' has no attribute {name!r}")
