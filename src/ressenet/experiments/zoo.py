"""Keeping the published weights: a manifest row from a hash-named file, and the README's table of them.

The README block between ``<!-- pretrained:start -->`` and ``<!-- pretrained:end -->`` is generated from the manifest
(ressenet/pretrained.py) and the finished runs of ``results/compressed`` (the family's mean ± SD over seeds beside
each file's own seed): ``ressenet models --pretrained --readme README.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ressenet.experiments.contrasts import mean_sd
from ressenet.experiments.gridspec import list_presets, load_grid
from ressenet.experiments.readme_block import block_lines
from ressenet.experiments.runs import collect_runs
from ressenet.experiments.stats import summarize
from ressenet.experiments.tables import Table
from ressenet.files import atomic_write_text
from ressenet.models import count_macs, create_model
from ressenet.pretrained import Weights, hashed_name, list_pretrained
from ressenet.weights import read_header, sha256_file

__all__ = ["manifest_row", "pretrained_block", "refresh_pretrained_block", "ZOO_START", "ZOO_END", "SCHEDULE"]

ZOO_START, ZOO_END = "<!-- pretrained:start -->", "<!-- pretrained:end -->"
SCHEDULE = "paper protocol compressed 8x"  # the schedule of results/compressed, as every weights label says it


def _preset_of(model: str, folder: str) -> str | None:
    """The preset that trains ``model`` into the runs folder ``folder`` (``compressed``, ``compressed-ablations``,
    ``compressed-depth56`` all train into ``results/compressed``), or None."""
    return next((name for name in list_presets() if (name == folder or name.startswith(f"{folder}-"))
                 and model in load_grid(name).models), None)


def manifest_row(path: str | Path, *, tag: str, default: bool = True, schedule: str = SCHEDULE,
                 preset: str | None = None, results: str = "results/compressed",
                 licence: str = "MIT") -> dict[str, Any]:
    """A manifest row for a hash-named weights file, from its header; its recipe trains the run again from the
    committed ``results/<schedule>/<run>/config.yaml``. Its accuracy is the run's final test top-1/top-5;
    ``ressenet eval --weights`` measures the file's own, which the row must record (they are equal on the same kind
    of CPU and torch build as the run's)."""
    path = Path(path)
    h = read_header(path)
    digest = sha256_file(path)
    if path.name != hashed_name(h["model"], digest):
        raise ValueError(f"{path} is not named by its hash ({hashed_name(h['model'], digest)}); export the run "
                         f"with `ressenet export RUN_DIR --out weights/`")
    tw = h.get("trained_with") or {}
    net = create_model(h["model"], num_classes=h["num_classes"], **h["options"])
    return {
        "model": h["model"], "tag": tag, "default": default, "file": path.name, "sha256": digest,
        "size": path.stat().st_size,
        "meta": {
            "test_top1": h["test_top1"], "test_top5": h["test_top5"], "data_label": h["data_label"],
            "schedule": schedule, "seed": h["seed"],
            "recipe": {"preset": preset or _preset_of(h["model"], Path(results).name), "iters": h["iters"],
                       "command": f"ressenet train --config {results}/{h['run']}/config.yaml --out runs/{h['run']}"},
            "params": h["params"], "macs": count_macs(net), "num_classes": h["num_classes"],
            "classes": (h.get("data") or {}).get("classes") or [], "mean": h["mean"], "std": h["std"],
            "input_size": h["input_size"], "precision": tw.get("precision") or "fp32", "licence": licence,
            "run": h["run"], "run_test_top1": h["test_top1"],
            "trained_with": {"torch": tw.get("torch"), "cpu": "CPU MODEL (fill in)"},
            "measured_with": {"torch": "TORCH OF THE EVAL (fill in)", "cpu": "CPU MODEL (fill in)"},
        },
    }


def _family_stats(rows: list[Weights], results: Path) -> dict[str, str]:
    """``mean ± SD (n)`` of the final test top-1 over the seeds of each row's model in ``results``."""
    runs, _, _ = collect_runs(results)
    out = {}
    for w in rows:
        values = [v for r in runs if r.model == w.model and r.label == w.meta["data_label"]
                  and (v := r.value("test_top1")) is not None]
        s = summarize(values)
        out[w.model] = f"{mean_sd(s)} (n = {s.n})" if s.n else "–"
    return out


def pretrained_block(results: str | Path, link: str = "results/compressed") -> list[str]:
    """The README block's lines (markers included): one row per published file."""
    rows = list_pretrained()
    stats = _family_stats(rows, Path(results))
    table = Table(["model", "tag", "top-1 of this file", "top-5", "its family: all seeds, mean ± SD (n)",
                   "exact − JPEG, 4,000 train images", "size", "file"], align="llrrlrrl")
    for w in rows:
        shift = w.meta.get("jpeg_shift")
        table.rows.append([f"`{w.model}`", w.tag, f"{w.meta['test_top1']:.2f}", f"{w.meta['test_top5']:.2f}",
                           stats[w.model],
                           f"{shift['exact_top1']:.2f} − {shift['jpeg_top1']:.2f} = "
                           f"{shift['exact_top1'] - shift['jpeg_top1']:+.2f}" if shift else "not measured",
                           f"{w.size / 1e6:.1f} MB", f"[{w.file}](weights/{w.file})"])
    labels = sorted({w.label for w in rows})
    return [ZOO_START, "", *table.markdown(), "",
            f"Top-1/top-5: test set of {' / '.join(labels) or 'no published weights'} "
            f"(`ressenet eval --weights MODEL` measures it again); "
            f"its family: the final test top-1 of all seeds of that model in [`{link}`]({link}), mean ± SD. "
            f"Generated by `ressenet models --pretrained --readme README.md`.", "", ZOO_END]


def refresh_pretrained_block(readme: str | Path, results: str | Path) -> bool:
    """Rewrites the README's pretrained block; True when it changed."""
    readme = Path(readme)
    text = readme.read_text()
    lines = text.splitlines(keepends=True)
    start, end = block_lines(lines, readme, ZOO_START, ZOO_END, "where the table of published weights goes")
    new = "".join(lines[:start]) + "\n".join(pretrained_block(results)) + "\n" + "".join(lines[end + 1:])
    if new != text:
        atomic_write_text(readme, new)
    return new != text
