"""`ressenet grid --fuse`: compatible cells packed into fused jobs, their command lines, running them."""
from __future__ import annotations

import json
import shlex
import sys

import pytest

from ressenet.engine.config import ConfigError
from ressenet.models import model_info
from ressenet.experiments.gridspec import expand_grid, load_grid
from ressenet.experiments.jobs import Job, emit_commands, job_command, member_template, plan_jobs, resolve_fuse
from ressenet.experiments.runner import run_grid


@pytest.fixture
def cells(tmp_path):
    # The paper preset: 4 families x 5 depths x 2 datasets; 3 seeds.
    return expand_grid(load_grid("paper"), tmp_path / "runs", seeds=3)


def test_jobs_are_products_of_one_depth_dataset_and_protocol(cells):
    jobs = plan_jobs(cells, 12)
    assert sum(len(j.cells) for j in jobs) == len(cells) == 120
    assert len(jobs) == 10  # one job per (depth, dataset): 4 families x 3 seeds
    for j in jobs:
        assert len({c.config.data.dataset for c in j.cells}) == 1
        assert len({model_info(c.model).depth for c in j.cells}) == 1
        models = {c.model for c in j.cells}
        seeds = {c.seed for c in j.cells}
        assert len(j.cells) == len(models) * len(seeds)  # a product, as the CLI expresses it
    # At most N members; 8 splits the 12 into 2 seeds x 4 models and 1 seed x 4 models.
    sizes = sorted(len(j.cells) for j in plan_jobs(cells, 8))
    assert max(sizes) == 8 and sum(sizes) == 120
    assert [len(j.cells) for j in plan_jobs(cells, 1)] == [1] * 120


def test_fused_command_line_round_trips_to_the_cells(cells):
    from ressenet.cli import build_parser, train_overrides
    from ressenet.engine.fused import fused_configs

    job = plan_jobs([c for c in cells if c.config.data.dataset == "cifar10" and "20" in c.model], 12)[0]
    argv = job_command(job)
    assert argv[:2] == ["ressenet", "train"] and "--member-name" in argv
    args = build_parser().parse_args(argv[1:])
    ov = train_overrides(args)
    models, seeds = ov.pop("model.name").split(","), [int(s) for s in ov.pop("run.seed").split(",")]
    out = ov.pop("run.out")
    got = fused_configs(ov, models, seeds, out, name_template=args.member_name)
    want = {c.name: c.config.to_dict() for c in job.cells}
    assert {cfg.run.out.split("/")[-1]: cfg.to_dict() for cfg in got} == want
    assert member_template(job.cells[0]) == "{model}-cifar10-s{seed}"


def test_emit_commands_writes_one_line_per_job(cells, tmp_path):
    path, script, _ = emit_commands(cells, tmp_path / "cmds.txt", fuse=12)
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and all("--member-name" in ln for ln in lines)
    assert not any("--fused-mechanism" in ln for ln in lines)  # auto: the engine picks by device
    grouped, _, _ = emit_commands(cells, tmp_path / "grouped.txt", fuse=12, mechanism="grouped")
    argv = shlex.split(grouped.read_text().splitlines()[0])
    assert argv[argv.index("--fused-mechanism") + 1] == "grouped"
    from ressenet.cli import build_parser
    assert build_parser().parse_args(argv[1:]).fused_mechanism == "grouped"
    assert "--array=1-10" in script.read_text()
    assert shlex.split(lines[0])[shlex.split(lines[0]).index("--model") + 1].count(",") == 3


def test_run_grid_fused_runs_each_cell_once(tmp_path):
    spec = load_grid("quick")
    cells = expand_grid(spec, tmp_path / "runs", seeds=2)
    seen = []

    def fused(job: Job) -> list[str]:
        seen.append([c.name for c in job.cells])
        # A stand-in trainer: writes every member's summary.json.
        outs = [str(c.out) for c in job.cells]
        code = ("import json, sys, pathlib\n"
                "for o in json.loads(sys.argv[1]):\n"
                "    pathlib.Path(o).mkdir(parents=True, exist_ok=True)\n"
                "    (pathlib.Path(o) / 'summary.json').write_text(json.dumps({'test_top1': 50.0}))\n")
        return [sys.executable, "-c", code, json.dumps(outs)]

    res = run_grid(cells, fuse=4, fused_command=fused, echo=lambda _m: None)
    assert sorted(res.succeeded) == sorted(c.name for c in cells) and not res.failed
    assert sorted(n for job in seen for n in job) == sorted(c.name for c in cells)


def test_resolve_fuse():
    assert resolve_fuse("auto", cuda=True) == 12 and resolve_fuse("auto", cuda=False) == 1
    assert resolve_fuse("4", cuda=False) == 4
    with pytest.raises(ConfigError, match="--fuse"):
        resolve_fuse("0", cuda=True)
