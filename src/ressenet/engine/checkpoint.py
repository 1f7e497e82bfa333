"""Training checkpoints: atomic saves (a crash leaves the previous good file in place) and validated loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dataclasses import dataclass

import torch
from torch import nn

from ressenet.engine.config import Config, config_from_dict
from ressenet.engine.setup import build_model
from ressenet.errors import RessenetError
from ressenet.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "open_checkpoint", "Checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, fsync, rename: the old checkpoint survives until the new one is whole."""
    atomic_write(path, lambda f: torch.save(state, f))


RESUME_FIX = "restore it from a backup, or delete it (or pass --overwrite) to start the run again"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    fix: str = RESUME_FIX) -> dict[str, Any]:
    """Load with ``weights_only=True`` (no code runs); a damaged file raises one clear RessenetError ending in
    ``fix`` (the default suits a run that resumes; ``ressenet eval`` passes its own)."""
    path = Path(path)
    if path.is_dir():
        raise RessenetError(f"checkpoint {path} is a directory; pass a checkpoint file in it, e.g. {path}/last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/zipfile errors for damaged files
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {text}" if text else type(e).__name__
        raise RessenetError(f"checkpoint {path} is corrupt or truncated ({reason}); {fix}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise RessenetError(f"{path} is not a ressenet checkpoint (no 'model' entry)")
    return state


@dataclass
class Checkpoint:
    """A checkpoint ``ressenet train`` wrote, opened: its raw ``state``, and its ``config`` validated."""

    path: Path
    state: dict[str, Any]
    config: Config
    fix: str

    def model(self, num_classes: int | None = None) -> nn.Module:
        """The checkpoint's model with its weights (eval mode off: as built). ``num_classes`` defaults to the
        checkpoint's own classifier's."""
        cfg = self.config
        if num_classes is None:
            fc = self.state["model"].get("fc.weight") if isinstance(self.state["model"], dict) else None
            num_classes = int(fc.shape[0]) if fc is not None else (cfg.model.num_classes or 10)
        model = build_model(cfg, num_classes)
        try:
            model.load_state_dict(self.state["model"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise RessenetError(f"{self.path}: its weights do not fit {cfg.model.name} ({mismatch(e)}); "
                                f"{self.fix}") from None
        return model


def open_checkpoint(path: str | Path, *, fix: str = RESUME_FIX) -> Checkpoint:
    """The one way to open a training checkpoint (resume, eval, analyze, export): :func:`load_checkpoint`, then its
    config read and validated as data. Every refusal is one line naming the file and ending in ``fix``."""
    path = Path(path)
    state = load_checkpoint(path, fix=fix)
    if not isinstance(state.get("config"), dict):
        raise RessenetError(f"{path} holds a {type(state.get('config')).__name__} where its config belongs: it was "
                            f"not written by ressenet train; {fix}")
    try:
        cfg = config_from_dict(state["config"], where=str(path))
    except (ValueError, TypeError, AttributeError) as e:
        raise RessenetError(f"{path} holds an unreadable config ({e}); {fix}") from None
    return Checkpoint(path, state, cfg, fix)


def mismatch(e: BaseException) -> str:
    """The informative part of a load_state_dict error: its first line only says "Error(s) in loading"."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or lines or [type(e).__name__]
    return useful[0][:200]
