"""``ressenet analyze RUN_DIR [RUN_DIR ...] --out DIR`` (wired into src/ressenet/cli.py's build_parser)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ressenet.analysis.gates import CONSTANT_STD
from ressenet.analysis.pipeline import analyze
from ressenet.engine.config import check_choice
from ressenet.errors import not_a_folder

__all__ = ["add_parser", "cmd_analyze"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ressenet analyze RUN_DIR [RUN_DIR ...] --out DIR`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze", help="what the SE blocks of trained runs learned, and how much the network relies on them",
        description="Excitation statistics (gate quantiles, class-conditional gates, selectivity) and reliance "
                    "(top-1 with each SE gate replaced by its mean or by 1) of each run's last.pt on its test split; "
                    "runs of one model are aggregated over seeds. Writes analysis.md, CSVs and PNGs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directory (its last.pt), a checkpoint file, or a folder of run directories")
    p.add_argument("--out", required=True, help="output folder for analysis.md, the CSVs and figures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", default=None, help="default: each checkpoint's")
    p.add_argument("--cache-dir", default=None,
                   help="where archives are decoded once (default: $RESSENET_CACHE or ~/.cache/ressenet)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch (default: 1000 on CUDA, 100 on the CPU)")
    p.add_argument("--block", dest="blocks", action="append", default=None, metavar="NAME",
                   help="restrict the reliance tests to this SE block (module name, e.g. layer2.0.shortcut.se_after; "
                        "repeatable); a block a checkpoint lacks is refused")
    p.add_argument("--no-reliance", dest="reliance", action="store_false",
                   help="skip the reliance tests (two test-set passes per SE block)")
    p.add_argument("--constant-std", type=float, default=CONSTANT_STD,
                   help=f"a gate is a learned per-channel scale when no channel's across-image std reaches this "
                        f"(default {CONSTANT_STD})")
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args: argparse.Namespace) -> int:
    """``ressenet analyze``: checks the flags, runs the analysis, prints where the page went; the exit code."""
    check_choice("run.device", args.device)
    if args.out is not None and (blocked := not_a_folder(args.out)) is not None:
        raise blocked  # before the analysis, which takes minutes, not after it

    path = analyze(args.run_dirs, args.out, device=args.device, data_root=args.data_root, cache_dir=args.cache_dir,
                   batch_size=args.batch_size, blocks=args.blocks, reliance=args.reliance,
                   constant_std=args.constant_std, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {path}")
    return 0
