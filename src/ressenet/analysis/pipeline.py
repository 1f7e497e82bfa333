"""``analyze()``: open the checkpoints, load each one's data once, analyse every run, write the outputs."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ressenet.analysis.gates import CONSTANT_STD
from ressenet.analysis.inputs import open_run, resolve_checkpoints
from ressenet.analysis.reliance import RunAnalysis, analyze_run
from ressenet.analysis.render import write_outputs
from ressenet.analysis.sites import missing_blocks_message, se_modules
from ressenet.engine.evaluation import data_as_given
from ressenet.engine.setup import RunData, load_data, resolve_device
from ressenet.errors import RessenetError
from ressenet.gradflow import grad_flow_section

__all__ = ["analyze"]


def analyze(run_dirs: Sequence[str | Path], out_dir: str | Path, *, device: str = "auto",
            data_root: str | None = None, cache_dir: str | None = None, batch_size: int | None = None,
            blocks: Sequence[str] | None = None, reliance: bool = True, constant_std: float = CONSTANT_STD,
            confidence: float = 0.95, figures: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Analyse the SE blocks of one or more runs' ``last.pt`` on their test split; write ``out_dir``.

    Args:
        run_dirs: run directories (their ``last.pt``), checkpoint files, or folders of run directories (a fused
            group's ``--out``).
        out_dir: where ``analysis.md``, the CSVs and the PNGs go (created).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root, cache_dir: override the checkpoints' data location (e.g. the data moved).
        batch_size: evaluation batch (default: 1000 on CUDA, 100 on the CPU).
        blocks: restrict the reliance tests to these SE blocks (module names, e.g. ``layer2.0.shortcut.se_after``);
            a name a checkpoint does not have is refused. Default: every SE block.
        reliance: run the reliance tests (2 passes over the test set per block, plus the all-at-once ones).
        constant_std: a block is a "learned per-channel scale" when no channel's across-image gate std reaches this.
        confidence: level of the drop's interval.

    Returns:
        The path of ``analysis.md``.

    Raises:
        RessenetError: no checkpoint, a damaged one, or a ``blocks`` name that a checkpoint's model has no SE block of.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not constant_std > 0:
        raise ValueError(f"constant_std must be positive, got {constant_std}")
    say = progress or (lambda _m: None)
    dev = resolve_device(device)
    opened = [open_run(run, ckpt) for run, ckpt in resolve_checkpoints(run_dirs)]
    if blocks:  # refuse before any data is loaded
        for o in opened:
            have = list(se_modules(o.model))
            missing = [b for b in blocks if b not in have]
            if missing:
                raise RessenetError(missing_blocks_message(missing, have, f"{o.cfg.model.name} ({o.checkpoint})"))
    data_cache: dict[str, RunData] = {}
    runs: list[RunAnalysis] = []
    for o in opened:
        data_as_given(o.cfg, data_root=data_root, cache_dir=cache_dir)  # as `ressenet eval`
        key = json.dumps(asdict(o.cfg.data), sort_keys=True, default=str)
        if key not in data_cache:
            say(f"loading {o.cfg.data.dataset} for {o.path}")
            data_cache[key] = load_data(o.cfg)
        say(f"analysing {o.path} ({o.cfg.model.name}, {len(se_modules(o.model))} SE blocks)")
        runs.append(analyze_run(o, data_cache[key], dev, batch_size=batch_size, blocks=blocks, reliance=reliance,
                                confidence=confidence))
        o.model.cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_outputs(runs, out, constant_std=constant_std, confidence=confidence, figures=figures)
    # Gradient flow over training, for runs trained with --log-grad-stats (engine/run.py; ressenet/gradflow.py).

    dirs = [Path(o.path) if Path(o.path).is_dir() else Path(o.path).parent for o in opened]
    extra = grad_flow_section(dirs, out)
    if extra:
        path.write_text(path.read_text().rstrip() + "\n\n" + "\n".join(extra))
    return path

