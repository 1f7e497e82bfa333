"""benchmarks/*.py: each script runs end to end at its smallest settings on the CPU, prints its figures and writes
its --json, so a refactor of the package that breaks a benchmark fails here instead of at the next measurement.

One case per script (two for roofline.py: measuring, and reading train_throughput.py's JSON), each run as the
README runs them: ``python benchmarks/<script>.py`` from the repository root, in a subprocess. Synthetic data, tiny
batches, one repeat, eager fp32 (never the compiled switches: a compilation alone takes longer than a case may).
The figures are not checked for speed, only that each was measured and printed.

Not covered: akamaster_eval.py (its weights are a clone of akamaster's repository, a download; its functions are
tested in test_akamaster_eval.py), the torchvision reference pipelines of train_throughput.py, eval_throughput.py
and data_pipeline.py (torchvision does not import beside the project's torch build), and the shell scripts
(gpu.sh, fused_gpu.sh, gpu_prologue.sh: tested through their CPU dry runs).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# The engine's data at its smallest: synthetic images generated at these sizes (nothing read), a training split of
# one batch of 16 (load_data refuses less), a few test images for the evaluation train() always ends with.
SYNTHETIC = ["--dataset", "synthetic", "--train-limit", "16", "--test-limit", "16"]
CPU = ["--device", "cpu", "--threads", "1"]


@dataclass(frozen=True)
class Case:
    """One benchmark run: its script, flags, a figure line its output must have, and a check of its --json."""

    script: str
    args: list[str]
    figure: str  # a regular expression (multi-line) matching a line that carries a measured figure
    check_json: Callable[[dict[str, Any]], bool] | None = None  # None: the script writes no --json
    shared_data: bool = False  # reads shared/data: "{data}" in args is that folder, "{cache}" the session's cache
    id: str = ""  # the test id where a script has several cases


CASES = [
    Case("train_throughput", [*SYNTHETIC, *CPU, "--models", "resnet20", "--switches", "fp32",
                              "--reference-models", "none", "--bare", "all", "--batch-size", "16",
                              "--log-every", "1", "--intervals", "1", "--repeats", "1"],
         r"^resnet20 +0\.245 +engine fp32\+nchw +\d+\.\d \(",
         lambda j: {"fp32+nchw"} <= set(j["models"]["resnet20"]["summary"]["bare"])),
    # The engine's Scores as the JSON's metrics: all four fields, over the 32 test images asked for.
    Case("eval_throughput", ["--dataset", "synthetic", "--train-limit", "16", "--test-limit", "32", *CPU,
                             "--models", "resnet20", "--switches", "fp32", "--reference", "none",
                             "--eval-batch-size", "16", "--warmup-images", "16", "--repeats", "1"],
         r"^resnet20 +engine fp32\+nchw +\d+\.\d \(.*\) +- +\d+\.\d\d +\d+\.\d\d$",
         lambda j: set(m := j["models"]["resnet20"]["metrics"]["engine fp32+nchw"]) == {"loss", "top1", "top5",
                                                                                         "images"}
         and m["images"] == 32),
    # Both settings eager: the default old setting compiles (about a minute here).
    Case("cpu_grid", [*SYNTHETIC, "--batch-size", "16", "--models", "resnet20", "--cores", "1", "--rounds", "1",
                      "--warmup", "1", "--seconds", "0.2", "--old-switch", "fp32+cl", "--new-switch", "fp32+cl"],
         r"^new / old: \d+\.\d\dx \(median of 1 rounds",
         lambda j: j["old"]["switch"] == j["new"]["switch"] == "fp32+cl" and j["ratio_median"] > 0),
    Case("data_pipeline", ["--dataset", "synthetic", "--batch-size", "16", "--batches", "2", "--repeats", "1",
                           "--warmup", "1", "--baseline", "none"],
         r"^  TrainLoader \(cpu, 1 threads\): +\d+\.\d"),
    # A failing case is printed and skipped with exit 0, so the figure row itself is what shows it ran.
    Case("fused_throughput", ["--device", "cpu", "--cases", "sequential:20:1", "--batch-size", "8",
                              "--seconds", "0.1", "--min-steps", "1"],
         r"^sequential +20 +1 +[\d,]+ +[\d,]+ +1\.00",
         lambda j: [r["mechanism"] for r in j["results"]] == ["sequential"]),
    Case("memory", [*SYNTHETIC, *CPU, "--model", "resnet20", "--iters", "2", "--log-every", "1", "--batch-size", "16",
                    "--sample-every", "0.1"],
         r"^peak resident set, whole process \(ru_maxrss\) +\d+\.\d$",
         lambda j: j["peak_rss_bytes"] > 0 and j["params"] == 272_474),
    Case("roofline", [*SYNTHETIC, *CPU, "--models", "resnet20", "--switch", "fp32", "--sizes", "128",
                      "--mm-repeats", "2", "--log-every", "1", "--intervals", "1", "--repeats", "1",
                      "--batch-size", "16"],
         r"^resnet20 +0\.245 +\d+ +\d+\.\d +\d+\.\d +\d+\.\d% +\d+\.\d",
         lambda j: j["achieved"]["resnet20"]["engine"] > 0 and j["achieved"]["resnet20"]["bare"] > 0,
         id="roofline-measured"),
    # As the README runs it: the committed train_throughput.json must stay readable (its engine column filled).
    Case("roofline", ["--device", "cpu", "--threads", "1", "--models", "res_se_net20", "--sizes", "128",
                      "--mm-repeats", "2", "--from-json", "benchmarks/results/train_throughput.json"],
         r"^res_se_net20 +0\.245 +\d+ +\d+\.\d +\d+\.\d +\d+\.\d%",
         lambda j: j["achieved"]["res_se_net20"]["engine"] > 0, id="roofline-from-json"),
    Case("scaling", [*SYNTHETIC, *CPU, "--switch", "fp32", "--depths", "20", "--depth-batch", "16",
                     "--batch-model", "resnet20", "--batch-sizes", "8,16", "--log-every", "1", "--intervals", "1",
                     "--repeats", "1"],
         r"^   20 +0\.245 \| +\d+\.\d \(.*\| +[+-]?\d+\.\d%",
         lambda j: [r["batch"] for r in j["batch"]] == [8, 16] and "se_cost" in j["depth"][0]),
    Case("se_cost", [*CPU, "--depths", "20", "--switch", "fp32", "--batch-size", "8", "--rounds", "2",
                     "--steps", "1", "--se-reps", "2", "--warmup", "1"],
         r"^   20 +0\.245 +\d+\.\d +\d+\.\d +[+-]\d+\.\d\d%",
         lambda j: [r["depth"] for r in j["rows"]] == [20]),
    Case("step_profile", [*CPU, "--switch", "fp32", "--model", "resnet20", "--steps", "1", "--warmup", "1",
                          "--reps", "1", "--batch-size", "8"],
         r"^  total +\d+\.\d ms",
         lambda j: j["profile_ms_per_step"] and len(j["convolutions"]) == 6),
    Case("conv_candidates", ["--device", "cpu", "--members", "1", "--batch-size", "4", "--repeats", "1"],
         r"^  64 +8x8 +1 +[\d,]+ +[\d,]+ +\d+\.\d\d",
         lambda j: [r["channels"] for r in j["rows"]] == [16, 32, 64]),
    # Published weights on real images: a broken normalisation or label order would fall to chance (10%).
    Case("jpeg_shift", ["--data", "{data}", "--cache-dir", "{cache}", "--models", "se_resnet20", "--threads", "1"],
         r"^se_resnet20 +exact +\d+\.\d\d +JPEG +\d+\.\d\d",
         lambda j: [r["model"] for r in j["rows"]] == ["se_resnet20"]
         and all(r["exact_top1"] > 80 and r["jpeg_top1"] > 80 for r in j["rows"]),
         shared_data=True),
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")  # a clean clone, not installed
    # One thread everywhere, the scripts without --threads too: two OpenMP threads beside any other work on a
    # 2-core machine collapse (seconds per step, benchmarks/README.md), and the cases must stay short.
    env["OMP_NUM_THREADS"] = "1"
    env["RESSENET_CACHE"] = str(tmp_path / "cache")  # nothing lands in the user's cache
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.id or c.script for c in CASES])
def test_benchmark_runs_and_prints_its_figures(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    args = case.args
    if case.shared_data:  # skipped without shared/data, failed in CI (conftest.py)
        # The session's decoded-image cache: decoded by whichever of this case and cifar10_jpeg comes first.
        fill = {"{data}": str(request.getfixturevalue("cifar10_jpeg_root").parent),
                "{cache}": str(request.getfixturevalue("data_cache_dir"))}
        args = [fill.get(a, a) for a in args]
    out = tmp_path / "figures.json"
    cmd = [sys.executable, f"benchmarks/{case.script}.py", *args, *(["--json", str(out)] if case.check_json else [])]
    res = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    tail = f"\n--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"{case.script} exited {res.returncode}{tail}"
    assert re.search(case.figure, res.stdout, re.MULTILINE), f"no line matching {case.figure!r}{tail}"
    if case.check_json:
        assert case.check_json(json.loads(out.read_text())), f"unexpected {out.name}: {out.read_text()[:2000]}"
