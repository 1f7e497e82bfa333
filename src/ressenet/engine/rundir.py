"""The run directory: create it, or find what it holds (a finished run, a resumable one, another configuration)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ressenet.engine.config import Config, diff_configs
from ressenet.errors import RessenetError

__all__ = ["RUN_FILES", "prepare_run_dir"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json")


def prepare_run_dir(cfg: Config, overwrite: bool, is_main: bool) -> tuple[Path, dict[str, Any] | None]:
    """Create or check ``run.out``; return (dir, finished summary or None). Refuses a foreign configuration."""
    out = Path(cfg.run.out)
    cfg_file = out / "config.yaml"
    if cfg_file.is_file():
        old = yaml.safe_load(cfg_file.read_text()) or {}
        changed = diff_configs(old, cfg.to_dict())
        if changed and not overwrite:
            shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(cfg.to_dict(), k)!r}" for k in changed[:4])
            raise RessenetError(f"{out} holds a run with another configuration ({shown}); choose another --out, "
                                f"or pass --overwrite to replace it")
        if changed and overwrite and is_main:
            for name in RUN_FILES + ("train.log",):
                (out / name).unlink(missing_ok=True)
        elif (out / "summary.json").is_file() and not overwrite:
            return out, json.loads((out / "summary.json").read_text())
        elif overwrite and is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    elif out.exists() and any(out.glob("*.pt")) and not overwrite:
        raise RessenetError(f"{out} holds checkpoints but no config.yaml; choose another --out or pass --overwrite")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out, None


def _get(tree: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (tree.get(section) or {}).get(key)
