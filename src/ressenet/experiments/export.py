"""``ressenet export RUN_DIR``: a run's final weights as a ``.safetensors`` file and a model card beside it.

The file holds the weights alone (no optimizer, no RNG state, no pickle) and a header (ressenet/weights.py) that says
what they are: model and options, class count, input normalisation, data name, label and fingerprint, iterations,
final test accuracy, the ressenet version and commit that trained them, and the whole training config. The card
(``FILE.md`` with the suffix replaced) says the same for people. ``last.pt`` stays what it is, for resuming.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ressenet.data import DataError, normalization
from ressenet.data.constants import DATASET_INFO
from ressenet.engine.checkpoint import open_checkpoint
from ressenet.engine.rundir import RunDir
from ressenet.errors import RessenetError
from ressenet.experiments.runs import config_protocol, dataset_label, protocol_text
from ressenet.experiments.schedule_page import schedule_text
from ressenet.experiments.tables import md_cell
from ressenet.files import atomic_write_text
from ressenet.models import FAMILY, count_params, model_info
from ressenet.pretrained import hashed_name
from ressenet.weights import normalization_problem, write_weights

__all__ = ["export_run", "card_path"]


def card_path(weights: str | Path) -> Path:
    """The model card of a weights file: ``x.safetensors`` -> ``x.md``."""
    return Path(weights).with_suffix(".md")


def _eval_at(run: RunDir, it: int) -> dict[str, Any] | None:
    """The eval record of metrics.jsonl at iteration ``it`` (None when the run was not evaluated there)."""
    found = [rec for rec in run.metrics("eval") if rec.get("iter") == it]
    return found[-1] if found else None


def _normalization(cfg: Any, meta: dict[str, Any], where: Path) -> tuple[list[float], list[float]]:
    """The run's input mean and std: recorded in config.yaml's meta, else the data layer's constants for the run's
    dataset and mode (what it trained with)."""
    if "mean" in meta or "std" in meta:
        # The loader's own rule (ressenet/weights.py): never write a file that `eval --weights` then refuses.
        problem = normalization_problem(meta.get("mean"), meta.get("std"))
        if problem is not None:
            raise RessenetError(f"{RunDir(where).config_file}: meta {problem}; the file was edited or damaged: "
                                f"restore it or train the run again")
        return [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]

    try:
        mean, std = normalization(cfg.data.dataset, cfg.data.normalization)
    except DataError:
        raise RessenetError(f"{where}: the run normalised its inputs with statistics of its own training set "
                            f"(data.normalization=dataset on {cfg.data.dataset}), and its config.yaml does not "
                            f"record them (it was trained before runs recorded meta.mean and meta.std); train it "
                            f"again to export it") from None
    return [float(v) for v in mean], [float(v) for v in std]


def export_run(run_dir: str | Path, out: str | Path | None = None, *, allow_unfinished: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Writes ``out`` (default ``RUN_DIR/<run name>.safetensors``; an existing folder: ``<model>-<first 8 hex of
    its sha256>.safetensors`` in it, as published weights are named) and its card; returns the header, the paths
    and the sha256.

    Raises:
        RessenetError: no run there, an unfinished run (unless ``allow_unfinished``), weights that do not fit the
            run's model, or an existing ``out`` or card (unless ``overwrite``).
    """
    files = RunDir(run_dir)
    run, ckpt_path = files.path, files.last
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found; pass a directory `ressenet train --out` wrote")
    if not ckpt_path.is_file():
        raise RessenetError(f"{run} holds no last.pt: not a run directory of ressenet train, or its checkpoint was "
                            f"not kept (results/ archives keep no weights); export the run where it was trained")
    hashed = out is not None and Path(out).is_dir()  # a folder: the file is named by its hash (the weights/ zoo)
    weights = (Path(out) / f".{run.resolve().name}.part.safetensors" if hashed else
               Path(out) if out is not None else run / f"{run.resolve().name}.safetensors")
    if weights.suffix != ".safetensors":
        raise RessenetError(f"--out {weights} must end in .safetensors (its model card goes beside it, as "
                            f"{card_path(weights).name})")
    card = card_path(weights)
    for path in (weights, card):
        if path.is_dir():  # --overwrite replaces a file, never a folder
            raise RessenetError(f"--out: {path} is a folder; choose a file name ending in .safetensors")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose another --out, or pass --overwrite to replace it")

    ckpt = open_checkpoint(ckpt_path, fix="export a last.pt that ressenet train wrote")
    state, cfg = ckpt.state, ckpt.config
    if not isinstance(state.get("model"), dict):
        raise RessenetError(f"{ckpt_path} holds no weights; it was not written by ressenet train")
    it, planned = state.get("iter"), cfg.optim.iters
    summary = files.read_summary()  # engine/runfiles.py checks every field: a damaged one is refused before writing
    finished = summary is not None and it == planned
    if not finished and not allow_unfinished:
        raise RessenetError(f"{run} did not finish (its last.pt is at iteration {it} of {planned}); run the same "
                            f"`ressenet train` command to finish it, or pass --allow-unfinished to export these "
                            f"weights as they are (the card says so)")
    tree = files.read_config() or {}
    meta = tree.get("meta") if isinstance(tree, dict) and isinstance(tree.get("meta"), dict) else {}

    fc = state["model"].get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise RessenetError(f"{ckpt_path}: its weights have no fc.weight head; not weights of a ressenet model")
    model = ckpt.model(int(fc.shape[0]))

    if finished:
        acc = {"test_top1": summary["test_top1"], "test_top5": summary["test_top5"], "test_iter": it}
        data = dict(summary.get("data") or {})
    else:
        rec = _eval_at(files, it)
        acc = ({"test_top1": rec["test_top1"], "test_top5": rec["test_top5"], "test_iter": it} if rec else
               {"test_top1": None, "test_top5": None, "test_iter": None})
        data = {"description": meta.get("data"), "fingerprint": state.get("data_fingerprint")}

    info = DATASET_INFO.get(cfg.data.dataset)
    if data.get("classes") is None and info is not None and info.classes is not None:
        data["classes"] = list(info.classes)
    label, _ = dataset_label(summary or {"dataset": cfg.data.dataset, "data": data}, cfg.to_dict())
    mean, std = _normalization(cfg, meta, run)
    fam = model_info(cfg.model.name)
    header = {
        "model": cfg.model.name, "family": fam.family.key if fam else None, "depth": fam.depth if fam else None,
        "options": model.options, "num_classes": model.num_classes, "params": count_params(model),
        "input_size": list(model.pretrained_cfg["input_size"]), "mean": mean, "std": std,
        "normalization": cfg.data.normalization, "dataset": cfg.data.dataset, "data_label": label,
        "data": {k: data.get(k) for k in ("description", "fingerprint", "lossless", "classes", "train_size",
                                          "test_size", "val_size")},
        "finished": finished, "iters": it, "planned_iters": planned, "seed": cfg.run.seed, **acc,
        "protocol": protocol_text(config_protocol(cfg.to_dict())),
        "trained_with": {"ressenet": meta.get("ressenet"), "git_commit": meta.get("git_commit"),
                         "torch": meta.get("torch"), "device": meta.get("device"),
                         # the arithmetic its accuracy was measured in, which `eval --weights` repeats
                         "precision": state.get("precision") or meta.get("precision")},
        "run": run.resolve().name, "config": cfg.to_dict(),
    }
    digest = write_weights(weights, model.state_dict(), header)
    if hashed:
        weights = _hash_named(weights, cfg.model.name, digest, overwrite)
        card = card_path(weights)
    atomic_write_text(card, model_card(header, weights.name, digest))
    return {"weights": str(weights), "card": str(card), "sha256": digest, "header": header}


def _md(value: Any) -> str:
    """A value from a file or a name anyone can choose, as inert Markdown text: HTML, pipes and backticks
    escaped, on one line (a run named with backticks and an <img onerror=...> must not become markup)."""
    return md_cell(value).replace("`", "\\`").replace("*", "\\*").replace("_", "\\_").replace("[", "\\[")


def _hash_named(tmp: Path, model: str, digest: str, overwrite: bool) -> Path:
    """Renames a written file to ``<model>-<first 8 hex of its sha256>.safetensors`` beside it."""
    final = tmp.with_name(hashed_name(model, digest))
    if not overwrite and (final.exists() or card_path(final).exists()):
        tmp.unlink()
        raise FileExistsError(f"{final} or its card exists; pass --overwrite to replace them")
    tmp.replace(final)
    return final


def _pct(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "not measured"


def model_card(h: dict[str, Any], filename: str, digest: str) -> str:
    """The Markdown card of a weights file, from its header."""
    title = FAMILY[h["family"]].title if h.get("family") in FAMILY else h["model"]
    o, tw, d = h["options"], h["trained_with"], h["data"]
    # What the accuracy is of, in full: "CIFAR-10 (JPEG copy), paper protocol compressed 8x (...), bf16, seed 0"
    label = _md(f"{h['data_label']}, {schedule_text(config_protocol(h.get('config') or {}))}, seed {h['seed']}")
    lines = [f"# {_md(h['model'])} trained on {_md(h['data_label'])}", ""]
    if not h["finished"]:
        lines += [f"**Unfinished run**: these are the weights at iteration {h['iters']:,} of the {h['planned_iters']:,} "
                  f"it was to train (exported with `--allow-unfinished`). They are not the run's result.", ""]
    lines += [
        f"{_md(filename)} holds the weights of {title}-{h['depth']} ({_md(h['model'])}: {h['params']:,} parameters, "
        f"{h['num_classes']} classes; shortcut {o['shortcut']}, SE reduction {o['se_reduction']}, layout "
        f"{o['layout']}). It is a [safetensors](https://github.com/huggingface/safetensors) file: loading it runs "
        f"no code. Its header holds everything below.",
        "",
        f"sha256: `{digest}`",
        "",
        "## Accuracy",
        "",
        "| data | test top-1 | test top-5 | iteration |",
        "|---|---:|---:|---:|",
        f"| {label} | {_pct(h['test_top1'])} | {_pct(h['test_top5'])} | "
        f"{h['test_iter'] if h['test_iter'] is not None else '-'} |",
        "",
        "Final weights, final test accuracy (not the best over training). `ressenet eval --weights` reproduces it "
        "on the same data." if h["test_top1"] is not None else
        "These weights were not evaluated at their iteration; `ressenet eval --weights` measures them.",
        "",
        "## Training",
        "",
        f"- run {_md(h['run'])}, seed {h['seed']}, {h['iters']:,} iterations; {_md(h['protocol'])}",
        f"- data: {_md(h['dataset'])} ({_md(d.get('description') or 'description not recorded')}); fingerprint "
        f"{_md(d.get('fingerprint'))}; lossless: "
        f"{({True: 'yes', False: 'no (JPEG)'}).get(d.get('lossless'), 'not recorded')}",
        f"- input: 3x32x32 RGB in [0, 1], normalised with mean {tuple(h['mean'])} and std {tuple(h['std'])} "
        f"({h['normalization']} normalisation)",
        f"- trained with ressenet {tw.get('ressenet')} (commit {tw.get('git_commit') or 'not recorded'}), torch "
        f"{tw.get('torch')}, on {tw.get('device')}",
        "",
        "## Use",
        "",
        "```python",
        "import ressenet",
        f"model = ressenet.load_pretrained({filename!r}).eval()  # or create_model({h['model']!r}, pretrained=...)",
        "cfg = model.pretrained_cfg  # input_size, mean, std, num_classes, classes",
        "```",
        "",
        "```",
        # pasted into a shell: quoted
        f"ressenet eval --weights {shlex.quote(filename)}"
        + (" --data-root DIR" if h["dataset"] in ("cifar10", "cifar100", "imagefolder") else ""),
        "```",
        "",
    ]
    return "\n".join(lines)
