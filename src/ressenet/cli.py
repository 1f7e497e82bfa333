"""Command-line front end: it parses arguments and calls library functions, nothing more.

    ressenet models [FILTER] [--json] [--pretrained]
    ressenet data info|download ...
    ressenet train --model res_se_net20 --dataset cifar10 --out runs/x
    ressenet eval --checkpoint runs/x/last.pt   (or --weights runs/x/x.safetensors)
    ressenet export runs/x [--out FILE.safetensors]
    ressenet tensorboard RUNS_DIR [--out DIR]
    ressenet grid PRESET --runs-dir runs
    ressenet report RUNS_DIR --out report
    ressenet reproduce PRESET
    ressenet analyze RUN_DIR [RUN_DIR ...] --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ressenet import __version__
from ressenet.analysis import add_parser as add_analyze_command
from ressenet.data import dataset_info, download, format_info
from ressenet.data.constants import DATASETS, DOWNLOADABLE
from ressenet.engine.config import FUSED_MECHANISMS, check_choice, load_config
from ressenet.engine.evaluation import evaluate_checkpoint, evaluate_weights
from ressenet.engine.fused import fused_configs, train_fused
from ressenet.engine.lock import EXIT_LOCKED, LockHeld
from ressenet.engine.tensorboard import convert_runs
from ressenet.engine.train import train
from ressenet.errors import USER_ERRORS, RessenetError
from ressenet.experiments.cli import add_experiment_commands
from ressenet.experiments.zoo import manifest_row, refresh_pretrained_block
from ressenet.experiments.export import export_run
from ressenet.models import describe_model, is_model, list_models
from ressenet.pretrained import get_weights, list_pretrained, weights_path
from ressenet.options import TRAIN_FLAGS, TRAIN_SWITCHES, add_train_options, train_overrides

__all__ = ["main", "build_parser", "train_overrides", "TRAIN_FLAGS", "TRAIN_SWITCHES"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ressenet`` argument parser: one sub-command per verb, the train flags generated from the config fields."""
    parser = argparse.ArgumentParser(prog="ressenet", description="ResNet / SE-ResNet / Res-SE-Net on CIFAR.")
    parser.add_argument("--version", action="version", version=f"ressenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models with their costs")
    p.add_argument("filter", nargs="?", help="substring or shell pattern, e.g. 'res_se_net*'")
    p.add_argument("--num-classes", type=int, default=10,
                   help="classes of the head the parameters are counted with (default 10; CIFAR-100: 100)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--pretrained", action="store_true",
                   help="list the published weights (create_model(name, pretrained=True)) with their accuracy")
    p.add_argument("--readme", metavar="FILE", default=None,
                   help="with --pretrained: rewrite FILE's table of published weights (its pretrained:start/end "
                        "block) from the manifest and --results")
    p.add_argument("--results", metavar="DIR", default="results/compressed",
                   help="with --readme: the finished runs whose seeds give each family's mean ± SD")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("data", help="inspect or download datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    for name, func, hlp in (("info", _cmd_data_info, "formats, counts and statistics per split"),
                            ("download", _cmd_data_download, "download and verify the official archive")):
        q = dsub.add_parser(name, help=hlp)
        q.add_argument("--dataset", required=True, choices=DATASETS if name == "info" else DOWNLOADABLE,
                       help="which dataset")
        q.add_argument("--data-root", default=None, help="folder (or image-folder archive); default ./data")
        q.add_argument("--cache-dir", default=None,
                       help="where archives are decoded once (default: $RESSENET_CACHE or ~/.cache/ressenet)")
        if name == "info":
            q.add_argument("--download", action="store_true", help="download when missing")
            q.add_argument("--json", action="store_true", help="print JSON")
        else:
            q.add_argument("--url", default=None, help="mirror URL of the archive (default: the official one)")
            q.add_argument("--variant", default="python", choices=("python", "binary"),
                           help="which official archive (python pickles or binary records)")
        q.set_defaults(func=func)

    p = sub.add_parser("train", help="train a model with the paper's protocol (resumes an existing --out)")
    add_train_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace a run directory holding another configuration")
    p.add_argument("--fused-mechanism", default="auto", choices=FUSED_MECHANISMS,
                   help="how several members (--model a,b --seed 1,2) train together: sequential (one after another "
                        "in one process), graphs (CUDA graphs replayed on parallel streams), grouped (one network "
                        "with convolutions grouped over the members, HFTA); auto: graphs on CUDA, sequential on the "
                        "CPU")
    p.add_argument("--member-name", metavar="TEMPLATE", default=None,
                   help="with several members: each member's directory under --out, from {model} and {seed}; "
                        "default '{model}-s{seed}' (the grid passes its cell names, e.g. '{model}-cifar10-s{seed}')")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint or an exported weights file on the test split")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a last.pt or best.pt that `ressenet train` wrote")
    which.add_argument("--weights", metavar="FILE_OR_URL",
                       help="a .safetensors file that `ressenet export` wrote (path or URL), or a published model's "
                            "name (MODEL or MODEL:TAG, `ressenet models --pretrained`); evaluated on the data its "
                            "header names (or --dataset), normalised as it was trained")
    p.add_argument("--sha256", default=None, help="with --weights: the file's expected sha256 (needed for a URL "
                                                  "without #sha256=HEX; the model card lists it)")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's")
    p.add_argument("--data-root", default=None, help="default: the checkpoint's")
    p.add_argument("--cache-dir", default=None,
                   help="where archives are decoded once (default: $RESSENET_CACHE or ~/.cache/ressenet)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="which split to evaluate: test (default), val (the run's held-out validation images; needs a "
                        "run trained with --val-split) or train")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch (default: 1000 on CUDA, 100 on the CPU)")
    p.add_argument("--allow-other-classes", action="store_true",
                   help="evaluate on data whose classes (names or order) differ from the checkpoint's")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="a finished run's weights as a .safetensors file with a model card")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory `ressenet train --out` wrote")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="the weights file, ending in .safetensors (its card goes beside it as FILE with .md); "
                        "default RUN_DIR/<run name>.safetensors")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="export the weights of a run that has not finished (the card and header say so)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE and its card")
    p.add_argument("--tag", default=None,
                   help="with --out weights/ (a folder: the file is named <model>-<sha256[:8]>.safetensors): print "
                        "the manifest row of the published file under this tag, e.g. c10-jpeg-compressed")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("tensorboard", help="TensorBoard event files for runs trained without --tensorboard")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder of run directories (any depth), e.g. results")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write the event files under DIR, mirroring RUNS_DIR (default: into each run directory)")
    p.add_argument("--overwrite", action="store_true", help="rewrite the event files of runs that have them")
    p.set_defaults(func=_cmd_tensorboard)

    # --- experiments (grid / report / reproduce) -------------------------------------------------------
    add_experiment_commands(sub)
    add_analyze_command(sub)
    return parser


def _cmd_models(args: argparse.Namespace) -> int:
    if args.pretrained or args.readme:
        return _pretrained_models(args)
    names = list_models(args.filter)
    if not names:
        print(f"no model matches {args.filter!r}; run `ressenet models` for all names", file=sys.stderr)
        return 2
    rows = [describe_model(n, num_classes=args.num_classes) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':32} {'params':>10} {'MMACs':>9} {'SE':>4} {'bridges':>7}  block")
    for r in rows:
        print(f"{r['name']:32} {r['params']:>10,} {r['macs'] / 1e6:>9.1f} {r['se_blocks']:>4} {r['bridges']:>7}  "
              f"{r['block']}")
    return 0


def _pretrained_models(args: argparse.Namespace) -> int:
    """``ressenet models --pretrained``: the manifest's rows (ressenet/pretrained.py), or the README table of them."""
    if args.readme:
        changed = refresh_pretrained_block(args.readme, args.results)
        print(f"{args.readme}: table of published weights {'rewritten' if changed else 'already current'}")
        return 0
    rows = list_pretrained(args.filter)
    if args.json:
        print(json.dumps([{**vars(w), "label": w.label} for w in rows], indent=2))
        return 0
    print(f"{'model':30} {'tag':22} {'top-1':>6} {'top-5':>6} {'size':>7}  file")
    for w in rows:
        print(f"{w.model:30} {w.tag + (' *' if w.default else ''):22} {w.meta['test_top1']:6.2f} "
              f"{w.meta['test_top5']:6.2f} {w.size / 1e6:5.1f}MB  {w.file}")
    labels = sorted({w.label for w in rows})
    print(f"top-1/top-5: test set of {'; '.join(labels) or 'none'}. * default tag (pretrained=True); another: "
          f"pretrained=\"TAG\"")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset, args.data_root, download=args.download, cache_dir=args.cache_dir)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    path = download(args.dataset, args.data_root or "./data", url=args.url, variant=args.variant)
    print(f"{args.dataset} verified at {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    overrides = train_overrides(args)
    models = [m.strip() for m in str(overrides.get("model.name") or "").split(",") if m.strip()]
    seeds = [s.strip() for s in str(overrides.get("run.seed") or "").split(",") if s.strip()]
    for m in models:  # each element of --model a,b, before anything touches the disk (did-you-mean on a typo)
        check_choice("model.name", m)
    if len(models) > 1 or len(seeds) > 1 or args.member_name:
        return _train_fused(args, overrides, models, seeds)
    cfg = load_config(args.config, overrides)
    summary = train(cfg, overwrite=args.overwrite)
    if summary is not None:
        print(f"final test top-1 {summary['test_top1']:.2f}%  top-5 {summary['test_top5']:.2f}%  "
              f"({summary['iters']} iterations, {summary['wall_seconds']:.0f} s) -> {cfg.run.out}")
    return 0


def _train_fused(args: argparse.Namespace, overrides: dict[str, Any], models: list[str], seeds: list[str]) -> int:
    """``--model a,b --seed 1,2,3``: the product of models and seeds, trained together (engine/fused.py)."""
    out = overrides.pop("run.out", None)
    if not out:
        raise RessenetError("several members (--model a,b or --seed 1,2) need --out DIR; each member trains in "
                            "DIR/<model>-s<seed>")
    base = load_config(args.config, {})
    models = models or [base.model.name]
    try:
        seed_list = [int(s) for s in seeds] if seeds else [base.run.seed]
    except ValueError:
        raise RessenetError(f"--seed {overrides.get('run.seed')!r} must be integers separated by commas, "
                            f"e.g. --seed 1,2,3") from None
    rest = {k: v for k, v in overrides.items() if k not in ("model.name", "run.seed")}
    cfgs = fused_configs(rest, models, seed_list, out, args.config, name_template=args.member_name)
    for s in train_fused(cfgs, overwrite=args.overwrite, mechanism=args.fused_mechanism):
        print(f"{s['model']} seed {s['seed']}: final test top-1 {s['test_top1']:.2f}%  top-5 {s['test_top5']:.2f}%")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    check_choice("data.dataset", args.dataset)  # None: the checkpoint's
    check_choice("run.device", args.device)

    if args.weights is not None:
        name, _, tag = args.weights.partition(":")
        if is_model(name) and not os.path.exists(args.weights):  # a published file by its model's name
            w = get_weights(name, tag or None)
            args.weights, args.sha256 = str(weights_path(w, args.cache_dir)), w.sha256
        res = evaluate_weights(args.weights, dataset=args.dataset, data_root=args.data_root, cache_dir=args.cache_dir,
                               split=args.split, device=args.device, batch_size=args.batch_size, sha256=args.sha256,
                               allow_other_classes=args.allow_other_classes)
    else:
        if args.sha256 is not None:
            raise ValueError("--sha256 checks a --weights file; a --checkpoint is checked by its own config")
        res = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_root=args.data_root,
                                  cache_dir=args.cache_dir, split=args.split, device=args.device,
                                  batch_size=args.batch_size, allow_other_classes=args.allow_other_classes)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['model']} on {res['dataset']} {res['split']} ({res['images']} images): top-1 {res['top1']:.2f}%  "
              f"top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.tag is not None and not (args.out and os.path.isdir(args.out)):
        raise ValueError("--tag prints the manifest row of a published file: give --out weights/ (the folder), which "
                         "names the file by its hash")
    res = export_run(args.run_dir, args.out, allow_unfinished=args.allow_unfinished, overwrite=args.overwrite)
    h = res["header"]
    acc = (f"test top-1 {h['test_top1']:.2f}% top-5 {h['test_top5']:.2f}% on {h['data_label']}"
           if h["test_top1"] is not None else "not evaluated at this iteration")
    state = "" if h["finished"] else f" (UNFINISHED: iteration {h['iters']} of {h['planned_iters']})"
    print(f"{h['model']}{state}: {acc}\n  weights {res['weights']}\n  card    {res['card']}\n  sha256  {res['sha256']}")
    if args.tag is not None:
        row = manifest_row(res["weights"], tag=args.tag)
        print("manifest row (add it to src/ressenet/pretrained.json; record `ressenet eval --weights`'s top-1/top-5 "
              "and the CPU and torch of both):\n" + json.dumps(row))
    return 0


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    for rel, what in convert_runs(args.runs_dir, out=args.out, overwrite=args.overwrite):
        print(f"{rel}: {what}")
    print(f"view them with: tensorboard --logdir {args.out or args.runs_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. User errors (bad config, missing data, bad names) print one line and exit with 2; a run
    directory held by another runner exits with 75 (engine/lock.py), which the grid reads as "taken"."""
    import warnings

    # Notes the package raises (a rebuilt cache, a fallback the user should know of) print as one line, not
    # Python's two-line "file:line: category" form; other libraries' warnings keep theirs.
    if not getattr(warnings.formatwarning, "_ressenet", False):
        plain = warnings.formatwarning

        def one_line(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
            if f"{os.sep}ressenet{os.sep}" in str(filename):
                return f"ressenet: note: {message}\n"
            return plain(message, category, filename, lineno, line)

        one_line._ressenet = True  # type: ignore[attr-defined]
        warnings.formatwarning = one_line
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if os.environ.get("RESSENET_DEBUG"):
            raise

        print(f"ressenet {args.command}: error: {e}", file=sys.stderr)
        return EXIT_LOCKED if isinstance(e, LockHeld) else 2
    except BrokenPipeError:  # `ressenet models | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ressenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
