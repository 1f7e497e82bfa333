"""The run directory: create it, or find what it holds (a finished run, a resumable one, another configuration)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


from ressenet.engine.checkpoint import remove_orphans
from ressenet.engine.config import Config, ConfigError, diff_configs, load_yaml
from ressenet.errors import RessenetError

__all__ = ["RUN_FILES", "RESULT_KEYS", "missing_results", "prepare_run_dir"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json")
# The numbers every finished run's summary.json has (train prints them, the report's tables and the grid's "done"
# count on them): a summary lacking one is not a finished run.
RESULT_KEYS = ("test_top1", "test_top5", "best_test_top1", "best_test_top5", "iters", "wall_seconds")


def missing_results(summary: Any) -> list[str]:
    """The RESULT_KEYS that ``summary`` lacks or holds as something other than a finite number (all, for a
    summary that is not a mapping)."""
    if not isinstance(summary, dict):
        return list(RESULT_KEYS)
    return [k for k in RESULT_KEYS if not (isinstance(summary.get(k), (int, float)) and
                                          not isinstance(summary.get(k), bool) and math.isfinite(summary[k]))]


def prepare_run_dir(cfg: Config, overwrite: bool, is_main: bool) -> tuple[Path, dict[str, Any] | None]:
    """Create or check ``run.out``; return (dir, finished summary or None). Refuses a foreign configuration."""
    out = Path(cfg.run.out)
    cfg_file = out / "config.yaml"
    if cfg_file.is_file():
        old = _read_config(cfg_file, overwrite)
        changed = diff_configs(old, cfg.to_dict()) if old is not None else ["(unreadable config.yaml)"]
        if changed and not overwrite:
            shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(cfg.to_dict(), k)!r}" for k in changed[:4])
            raise RessenetError(f"{out} holds a run with another configuration ({shown}); choose another --out, "
                                f"or pass --overwrite to replace it")
        if changed and overwrite and is_main:
            for name in RUN_FILES + ("train.log",):
                (out / name).unlink(missing_ok=True)
        elif (out / "summary.json").is_file() and not overwrite:
            fix = "delete it to finish the run again from its last.pt, or pass --overwrite"
            try:
                summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RessenetError(f"{out / 'summary.json'} is unreadable ({type(e).__name__}); {fix}") from None
            missing = missing_results(summary)
            if missing:
                raise RessenetError(f"{out / 'summary.json'} holds no finished run's result (a "
                                    f"{type(summary).__name__} without a number for {', '.join(missing)}); {fix}")
            return out, summary
        elif overwrite and is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    elif out.exists() and any(out.glob("*.pt")) and not overwrite:
        raise RessenetError(f"{out} holds checkpoints but no config.yaml; choose another --out or pass --overwrite")
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RessenetError(f"cannot create {out}: {e.strerror or e}; choose another --out") from None
        remove_orphans(out, RUN_FILES)  # temporary files of a writer killed mid-write
    return out, None


def _read_config(path: Path, overwrite: bool) -> dict[str, Any] | None:
    """A run directory's config.yaml as a mapping; one line naming it when it is not one (None with --overwrite)."""
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        why = str(e).removeprefix(f"{path}").strip(" :") if isinstance(e, ConfigError) else type(e).__name__
    else:
        if isinstance(tree, dict):
            return tree
        why = f"holds a {type(tree).__name__}, not a mapping"
    if overwrite:
        return None
    raise RessenetError(f"{path} is not a readable run config ({why}); move the directory away or pass --overwrite")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (tree.get(section) or {}).get(key)
