"""Checkpoints: written atomically (a crash at any moment leaves the previous good file in place), opened as data,
and restored into a resuming run's objects."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ressenet.engine.config import Config, config_from_dict, diff_configs, dotted_value
from ressenet.engine.setup import build_model
from ressenet.errors import RessenetError
from ressenet.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "open_checkpoint", "Checkpoint", "restore_checkpoint",
           "CHECKPOINT_VERSION", "CHECKPOINT_KEYS", "mismatch"]

CHECKPOINT_VERSION = 1
# What last.pt holds (engine/run.py ``Run.checkpoint_state``); a file lacking one is not a checkpoint to resume.
CHECKPOINT_KEYS = ("iter", "model", "optimizer", "scaler", "data", "rng", "best", "wall_seconds", "steady", "config")


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


def restore_checkpoint(path: Path, cfg: Config, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, loader: Any, progress: Any, device: torch.device,
                       fingerprint: str | None) -> None:
    """Loads ``last.pt`` into a resuming run's live objects (``progress``: its engine/run.py ``TrainState``),
    treating the file as data: its own config must be the run's (a checkpoint copied in from another run is refused,
    not resumed under the wrong seed or lr), its keys complete, its iteration within the run, its weights this
    model's. Every refusal is one line naming the file."""
    fix = f"delete {path} (or pass --overwrite) to start this run again"
    opened = open_checkpoint(path, fix=fix)
    ckpt = opened.state
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise RessenetError(f"{path} lacks {', '.join(missing)}: not a checkpoint of ressenet train; {fix}")
    changed = diff_configs(opened.config.to_dict(), cfg.to_dict())
    if changed:
        shown = ", ".join(f"{k}: {dotted_value(ckpt['config'], k)!r} in the checkpoint, "
                          f"{dotted_value(cfg.to_dict(), k)!r} here" for k in changed[:3])
        raise RessenetError(f"{path} belongs to another run ({shown}); {fix}")
    recorded = ckpt.get("data_fingerprint")
    if recorded is not None and fingerprint is not None and recorded != fingerprint:
        raise RessenetError(f"{path} was trained on other data (fingerprint {recorded}, the data loaded now is "
                            f"{fingerprint}); point --data-root at the data it was trained on, or {fix}")
    it = ckpt["iter"]
    if not isinstance(it, int) or not 0 <= it <= cfg.optim.iters:
        raise RessenetError(f"{path} is at iteration {it!r}, outside this run's 0..{cfg.optim.iters}; {fix}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        progress.load_state_dict(ckpt)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RessenetError(f"{path} does not fit this run ({first}); {fix}") from None

