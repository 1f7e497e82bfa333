"""The checkpoints ``ressenet analyze`` reads: run-directory resolution and opening (config and model)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ressenet.engine.checkpoint import open_checkpoint
from ressenet.engine.rundir import RunDir
from ressenet.errors import RessenetError

__all__ = ["Opened", "resolve_checkpoints", "open_run"]


@dataclass
class Opened:
    """A checkpoint with its config and model, before any data is loaded (cheap: checks come first)."""

    path: Path
    checkpoint: Path
    state: dict[str, Any]
    cfg: Any
    model: nn.Module


def resolve_checkpoints(run_dirs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(run dir, checkpoint) for each argument: a run dir (its last.pt), a .pt file, or a folder of run dirs (a
    fused group, a grid's runs dir: each subfolder holding a last.pt)."""
    if not run_dirs:
        raise RessenetError("analyze needs at least one run directory")
    out: list[tuple[Path, Path]] = []
    for arg in run_dirs:
        p = Path(arg)
        if p.is_file():
            out.append((p.parent, p))
        elif RunDir(p).last.is_file():
            out.append((p, RunDir(p).last))
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if RunDir(d).last.is_file())
            if not subs:
                why = "a config.yaml but no last.pt yet" if RunDir(p).config_file.is_file() else "no last.pt"
                raise RessenetError(f"{p} holds {why}, nor any run directory with one; pass run directories "
                                    f"written by `ressenet train` (or their last.pt)")
            out += [(d, RunDir(d).last) for d in subs]
        else:
            raise RessenetError(f"run directory {p} does not exist")
    seen: set[Path] = set()
    unique = []
    for run, ckpt in out:
        key = ckpt.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((run, ckpt))
    return unique


def open_run(run: Path, ckpt: Path) -> Opened:
    """The checkpoint of one run, opened (engine/checkpoint.open_checkpoint) with its config and model."""
    opened = open_checkpoint(ckpt, fix="analyze reads checkpoints written by `ressenet train`")
    cfg, state = opened.config, opened.state
    model = opened.model()  # its own classifier's class count
    model.eval()
    kept = {k: state.get(k) for k in ("iter", "data_fingerprint")}  # not the optimizer state: runs are held together
    return Opened(run, ckpt, kept, cfg, model)

