"""What the SE blocks of a trained run learned, and how much the network relies on them.

The paper (Varshaneya et al., arXiv:1902.06066) explains Res-SE-Net's gain by SE blocks on the bridge-connections
that "enhance" the features the bridges carry. ``analyze(run_dirs, out_dir)`` examines that on any checkpoint the
engine wrote (any family and depth, the ablations, fused members), for every SE block, bridge and residual alike:

* **Excitation statistics** over the test set: the distribution of gate values per block (quantiles), the mean gate
  vector per class (class-conditional excitation, Hu et al.'s figure for SE-ResNet) and selectivity, the variance
  of the class means across classes against the mean within-class variance. A block whose gate hardly moves from
  image to image (no channel's across-image std reaches ``constant_std``) is flagged: it is a learned per-channel
  scale, which the batch norm before it could carry alone.
* **Reliance**: test top-1 with a block's gate replaced at inference by (a) its test-set mean vector (the input
  dependence removed, the average scale kept) and (b) 1, one block at a time and all at once, against the intact
  network on the same images (inference-time interventions on the trained weights, BatchNorm statistics not
  recalibrated). The drop's 95% interval is the exact conditional (Clopper-Pearson) interval on the discordant
  pairs, McNemar's setting: of the ``d`` images whose correctness changed, ``b`` lost
  and ``c`` gained, ``b ~ Binomial(d, p)`` and drop ``= d (2p - 1) / N``; the p-value is McNemar's exact test.
* **Across runs**: runs of one model (seeds) are aggregated per block position with mean, SD and n.

Replacements are forward hooks on :class:`~ressenet.models.layers.SEBlock` (see :func:`gate_override`); gates are
read through the blocks' own ``record`` flag. Nothing in the model code changes.

Outputs in ``out_dir``: ``analysis.md``, ``gates.csv`` (one row per run and block), ``gate_channels.csv`` (per
channel), ``gate_class_means.csv`` (per class and channel), ``reliance.csv``, ``across_runs.csv`` and PNGs drawn
with matplotlib's object API.

Modules, by concern: ``sites`` (where the SE blocks sit), ``hooks`` (reading and replacing gates), ``gates`` (gate
statistics), ``inputs`` (which checkpoints, opened), ``reliance`` (one run analysed), ``pipeline`` (``analyze``),
``summary`` (runs aggregated over seeds), ``render`` and ``prose`` (the CSVs and ``analysis.md``), ``figures``,
``cli``. The statistics they share with the report live in :mod:`ressenet.experiments.stats`, the table type in
:mod:`ressenet.experiments.tables`.
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
