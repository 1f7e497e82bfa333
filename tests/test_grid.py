"""Grid expansion, cell names, skip/resume, parallel slots, emitted commands. Fake trainers only: nothing trains."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from fixtures_runs import fake_trainer, make_cell_run, make_run

from ressenet.cli import build_parser, main, train_overrides
from ressenet.engine.config import ConfigError, load_config
from ressenet.experiments import runner as grid_mod
from ressenet.experiments.cells import cell_state
from ressenet.experiments.gridspec import expand_grid, list_presets, load_grid, parse_seeds
from ressenet.experiments.jobs import emit_commands, train_command
from ressenet.experiments.runner import failure_line, run_grid

DEPTHS = (20, 32, 44, 56, 110)


def test_presets_are_shipped_and_load():
    assert {"paper", "ablations", "quick", "compressed", "compressed-ablations", "compressed-depth56"} <= set(
        list_presets())
    for name in list_presets():
        spec = load_grid(name)
        assert spec.description and spec.models and spec.datasets


def test_paper_grid_is_40_cells_per_seed_with_unique_stable_names(tmp_path):
    spec = load_grid("paper")
    one = expand_grid(spec, tmp_path, seeds=1)
    assert len(one) == 40
    expected = {(f"{fam}{d}", ds) for fam in ("resnet", "se_resnet", "res_se_net") for d in DEPTHS
                for ds in ("cifar10", "cifar100")}
    expected |= {(f"resnet{d}_nobridge", ds) for d in DEPTHS for ds in ("cifar10", "cifar100")}
    assert {(c.model, c.dataset) for c in one} == expected
    three = expand_grid(spec, tmp_path)  # the preset's default: 3 seeds
    assert len(three) == 120 and len({c.name for c in three}) == 120
    assert sorted({c.seed for c in three}) == [0, 1, 2]
    # Stable: the same names every time, in seed-major order, readable and free of result-neutral overrides.
    again = expand_grid(load_grid("paper"), tmp_path, overrides={"data.data_root": "/elsewhere", "run.device": "cuda"})
    assert [c.name for c in again] == [c.name for c in three]
    assert three[0].name == "resnet20-cifar10-s0"
    assert {"res_se_net44-cifar100-s2", "resnet110_nobridge-cifar100-s1", "se_resnet56-cifar10-s0"} <= {
        c.name for c in three}
    assert all(c.out == tmp_path / c.name for c in three)
    assert all(c.config.optim.iters == 64_000 and c.config.optim.milestones == [32_000, 48_000] for c in three)


def test_ablations_and_quick_presets(tmp_path):
    abl = expand_grid(load_grid("ablations"), tmp_path, seeds=1)
    assert len(abl) == 30
    assert {c.model for c in abl} >= {"res_se_net44", "res_se_net44_se_before_conv", "res_se_net44_se_all_identity"}
    # Shared with the paper grid: the same Res-SE-Net cell names and configs.
    paper = {c.name: c for c in expand_grid(load_grid("paper"), tmp_path, seeds=1)}
    for c in abl:
        if c.model.startswith("res_se_net") and not c.model.endswith(("conv", "identity")):
            assert paper[c.name].config == c.config
    quick = load_grid("quick")
    cells = expand_grid(quick, tmp_path)
    assert {c.model for c in cells} == {"resnet20", "se_resnet20", "res_se_net20"}
    assert len(cells) == 3 * len(quick.seeds)
    assert all(c.config.optim.iters <= 2000 and c.config.run.eval_every > 0 for c in cells)


def test_seeds_parsing():
    assert parse_seeds(3) == (0, 1, 2)
    assert parse_seeds("2") == (0, 1)
    assert parse_seeds("0,4,7") == (0, 4, 7)
    assert parse_seeds("12,") == (12,)
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    assert parse_seeds("0,") == (0,)
    for zero in ("0", 0):  # a count of none, most likely meant as seed 0: the message says how to ask for that
        with pytest.raises(ConfigError, match=r"--seeds 0, \(or --seeds 1\)"):
            parse_seeds(zero)


def test_overrides_name_the_cells_and_precedence(tmp_path):
    spec = load_grid("quick")
    cells = expand_grid(spec, tmp_path, seeds=1, overrides={
        "data.dataset": "imagefolder", "data.data_root": "/d/cifar10-jpeg.tar.gz", "optim.iters": "800",
        "optim.milestones": "400,600", "run.device": "cpu", "run.eval_every": "500"})
    # --dataset replaces the dataset axis; data_root/device are result-neutral; eval_every equals the preset's.
    assert [c.name for c in cells] == [f"{m}-imagefolder-iters=800-milestones=400_600-s0"
                                       for m in ("resnet20", "se_resnet20", "res_se_net20")]
    c = cells[0]
    assert c.config.optim.iters == 800 and c.config.optim.milestones == [400, 600]
    assert c.config.data.data_root == "/d/cifar10-jpeg.tar.gz"
    assert c.config.optim.batch_size == 128  # from the preset, untouched
    for bad in ({"model.name": "resnet20"}, {"run.seed": 1}, {"run.out": "x"}):
        with pytest.raises(ConfigError):
            expand_grid(spec, tmp_path, overrides=bad)
    with pytest.raises(ConfigError, match="unknown config key"):
        expand_grid(spec, tmp_path, overrides={"optim.itters": 5})


def test_user_grid_file_with_variants(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "description": "mine", "seeds": [5, 6], "depths": [20, 32], "models": ["resnet{depth}", "res_se_net{depth}"],
        "datasets": ["synthetic"], "variants": [{}, {"data.val_split": 64}],
        "config": {"optim": {"iters": 20, "milestones": [10]}, "data": {"train_limit": 256}}}))
    spec = load_grid(str(path))
    assert spec.name == "mine" and spec.models == ("resnet20", "res_se_net20", "resnet32", "res_se_net32")
    cells = expand_grid(spec, tmp_path / "runs")
    assert len(cells) == 4 * 2 * 2
    names = {c.name for c in cells}
    assert "resnet32-synthetic-s5" in names and "resnet32-synthetic-val_split=64-s6" in names
    # A command-line override that replaces a variant's value would merge two cells: refused.
    with pytest.raises(ConfigError, match="share the name"):
        expand_grid(spec, tmp_path / "runs", overrides={"data.val_split": 64})


@pytest.mark.parametrize("tree, match", [
    ({"models": ["resnet21"]}, "unknown model"),
    ({"models": ["resnet{depth}"]}, "no depths"),
    ({"models": ["resnet20"], "modles": 1}, "unknown grid key"),
    ({"models": ["resnet20"], "config": {"optim": {"lr": -1}}}, "optim.lr"),
    ({"models": ["resnet20"], "config": {"run": {"seed": 3}}}, "set by the grid"),
])
def test_bad_grid_files_fail_with_a_clear_message(tmp_path, tree, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=match):
        load_grid(path)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="quick"):
        load_grid("nope")


def _parse_back(line: str):
    argv = shlex.split(line)
    assert argv[:2] == ["ressenet", "train"]
    args = build_parser().parse_args(argv[1:])
    return load_config(args.config, train_overrides(args))


def test_emitted_commands_parse_back_to_the_same_configs(tmp_path):
    spec = load_grid("quick")
    cells = expand_grid(spec, tmp_path / "runs", seeds=2, overrides={
        "data.dataset": "imagefolder", "data.data_root": "/data dir/cifar10-jpeg.tar.gz", "data.val_split": 5000,
        "optim.lr": "0.05", "optim.weight_decay": "5e-4", "run.precision": "fp32", "data.augment": False})
    make_cell_run(cells[0])  # finished: left out
    path, script, conflicts = emit_commands(cells, tmp_path / "out" / "commands.txt")
    lines = path.read_text().splitlines()
    assert len(lines) == len(cells) - 1 and not conflicts
    by_out = {str(c.out): c for c in cells}
    for line in lines:
        cfg = _parse_back(line)
        assert cfg.to_dict() == by_out[cfg.run.out].config.to_dict()
        assert "--set" in line and "--model" in line and "--seed" in line
    text = script.read_text()
    assert script.name == "commands.slurm" and f"#SBATCH --array=1-{len(lines)}" in text
    assert str(path.absolute()) in text and "SLURM_ARRAY_TASK_ID" in text
    # Every paper cell's command parses back too (the defaults need no --set at all).
    for c in expand_grid(load_grid("paper"), tmp_path / "p", seeds=1):
        line = shlex.join(train_command(c))
        assert _parse_back(line).to_dict() == c.config.to_dict()


def test_cell_states_done_partial_pending_conflict(tmp_path):
    cells = {c.model: c for c in expand_grid(load_grid("quick"), tmp_path, seeds=1)}
    done, partial, pending = cells["resnet20"], cells["se_resnet20"], cells["res_se_net20"]
    make_cell_run(done, top1=71.5)
    make_cell_run(partial, finished=False, last_iter=400)
    assert cell_state(done).state == "done" and "71.50" in cell_state(done).detail
    st = cell_state(partial)
    assert st.state == "partial" and "400" in st.detail and st.runnable
    # Metrics without last.pt (a checkpoint lost with its machine): the plan says the run starts again, not resumes.
    assert "starts again from iteration 0" in st.detail and "resumes" not in st.detail
    (partial.out / "last.pt").write_bytes(b"")
    assert "resumes from last.pt" in cell_state(partial).detail
    assert cell_state(pending).state == "pending"
    # A directory holding another configuration is a conflict, never silently skipped or resumed.
    make_run(tmp_path, pending.name, model="res_se_net20", iters=50)
    st = cell_state(pending)
    assert st.state == "conflict" and "optim.iters" in st.detail and not st.runnable


def test_run_grid_skips_finished_resumes_unfinished_runs_pending(tmp_path):
    cells = expand_grid(load_grid("quick"), tmp_path, seeds=1, overrides={"optim.iters": 30, "optim.milestones": "20"})
    done, partial, pending = cells
    make_cell_run(done)
    make_cell_run(partial, finished=False, last_iter=20)
    assert [cell_state(c).state for c in cells] == ["done", "partial", "pending"]
    lines: list[str] = []
    result = run_grid(cells, command=fake_trainer(), echo=lines.append)
    assert result.ok and result.skipped == [done.name] and sorted(result.succeeded) == sorted([partial.name,
                                                                                                pending.name])
    assert not (done.out / "invocations.txt").exists()  # a finished cell is never started
    assert json.loads((partial.out / "summary.json").read_text())["resumed_from"] == 20
    assert json.loads((pending.out / "summary.json").read_text())["resumed_from"] == 0
    assert "fake trainer" in (pending.out / "train.log").read_text()
    assert all(cell_state(c).state == "done" for c in cells)
    # Re-running is a no-op.
    again = run_grid(cells, command=fake_trainer(), echo=lines.append)
    assert again.ok and len(again.skipped) == 3 and not again.succeeded


def test_a_failing_cell_is_reported_and_the_others_go_on(tmp_path):
    cells = expand_grid(load_grid("quick"), tmp_path, seeds=1, overrides={"optim.iters": 5, "optim.milestones": "3"})
    lines: list[str] = []
    result = run_grid(cells, command=fake_trainer(fail={cells[1].name}), echo=lines.append)
    assert not result.ok
    assert [(n, rc) for n, rc, _ in result.failed] == [(cells[1].name, 3)]
    log = Path(result.failed[0][2])
    assert log == cells[1].out / "train.log" and "simulated failure" in log.read_text()
    assert sorted(result.succeeded) == sorted([cells[0].name, cells[2].name])
    assert any("FAILED" in line and cells[1].name in line for line in lines)
    assert cell_state(cells[1]).state == "partial" or cell_state(cells[1]).state == "pending"


def test_one_cell_per_gpu_in_parallel(tmp_path):
    cells = expand_grid(load_grid("quick"), tmp_path, seeds=2, overrides={"optim.iters": 3, "optim.milestones": "2"})
    result = run_grid(cells, gpus=["0", "1"], command=fake_trainer(sleep=0.3), echo=lambda s: None)
    assert result.ok and len(result.succeeded) == 6
    seen = [json.loads((c.out / "summary.json").read_text())["cuda_visible_devices"] for c in cells]
    assert set(seen) == {"0", "1"}


def test_cli_dry_run_and_emit(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["grid", "quick", "--runs-dir", str(runs), "--dry-run", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "9 cells" in out and "resnet20-cifar10-s2" in out and "9 pending" in out
    assert not runs.exists()  # a dry run creates nothing
    cmd_file = tmp_path / "cmds.txt"
    assert main(["grid", "paper", "--runs-dir", str(runs), "--seeds", "1", "--emit-commands", str(cmd_file),
                 "--filter", "*-cifar100-*", "--iters", "100", "--set", "optim.milestones=50,75"]) == 0
    lines = cmd_file.read_text().splitlines()
    assert len(lines) == 20
    cfg = _parse_back(lines[0])
    assert cfg.optim.iters == 100 and cfg.optim.milestones == [50, 75] and cfg.data.dataset == "cifar100"
    assert Path(cfg.run.out).name == f"{cfg.model.name}-cifar100-iters=100-milestones=50_75-s0"
    assert (tmp_path / "cmds.slurm").is_file()
    assert main(["grid", "nope", "--dry-run"]) == 2


def test_cli_grid_runs_cells_and_exits_nonzero_on_failure(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    failing = "se_resnet20-cifar10-iters=4-milestones=2-s0"
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer(fail={failing}))
    argv = ["grid", "quick", "--runs-dir", str(runs), "--seeds", "1", "--iters", "4", "--milestones", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED se_resnet20-cifar10-iters=4-milestones=2-s0: exit code 3" in err and "train.log" in err
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer())
    assert main(argv) == 0
    assert "2 already done, 1 finished now" in capsys.readouterr().out


COMPRESSED_MODELS = {"compressed": {"resnet20", "res_se_net20", "se_resnet20", "resnet20_nobridge"},
                     "compressed-ablations": {"res_se_net20_se_before_conv", "res_se_net20_se_all_identity"}}


@pytest.mark.parametrize("name", sorted(COMPRESSED_MODELS))
def test_compressed_presets_are_the_shared_grids_cell_for_cell(tmp_path, shared_data_dir, name):
    # A shipped preset and ../shared/experiments/<name>.yaml are one grid: runs made with either are the
    # other's cells (same names, same configs), so imported runs count as done under the preset.
    shared = shared_data_dir.parent / "experiments" / f"{name}.yaml"
    if not shared.is_file():
        pytest.skip(f"{shared} not found")
    preset, from_file = (expand_grid(load_grid(g), tmp_path) for g in (name, str(shared)))
    assert len(preset) == 5 * len(COMPRESSED_MODELS[name]) and [c.name for c in preset] == [c.name for c in from_file]
    assert [c.config for c in preset] == [c.config for c in from_file]
    assert {c.model for c in preset} == COMPRESSED_MODELS[name]
    assert all((c.config.optim.iters, c.config.optim.milestones, c.config.run.precision, c.config.run.compile)
               == (8000, [4000, 6000], "bf16", False) for c in preset)


def test_compressed_depth56_preset_is_the_compressed_config_at_depth_56(tmp_path):
    base = expand_grid(load_grid("compressed"), tmp_path)
    deep = expand_grid(load_grid("compressed-depth56"), tmp_path)
    assert len(deep) == 15 and len({c.name for c in deep}) == 15
    assert {c.model for c in deep} == {"resnet56", "res_se_net56", "resnet56_nobridge"}
    assert sorted({c.seed for c in deep}) == [0, 1, 2, 3, 4]
    assert all(c.out == tmp_path / c.name for c in deep)  # beside the depth-20 runs in one runs folder
    # The same config as the compressed grid's, model aside (compile included until it is measured at depth 56).
    same = {"resnet56": "resnet20", "res_se_net56": "res_se_net20", "resnet56_nobridge": "resnet20_nobridge"}
    by_name = {c.name: c for c in base}
    for c in deep:
        twin = by_name[c.name.replace(c.model, same[c.model], 1)]
        assert c.config.optim == twin.config.optim and c.config.run.precision == twin.config.run.precision
        assert (c.config.run.eval_every, c.config.run.log_every, c.config.run.ckpt_every) == (2000, 100, 500)
        assert c.config.model.name == c.model


def test_jobs_auto_is_one_single_threaded_process_per_core_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(grid_mod, "usable_cores", lambda: 4)
    assert grid_mod.resolve_jobs("auto", gpus=[], cuda=False) == 4
    assert grid_mod.resolve_jobs(None, gpus=[], cuda=False) == 4
    assert grid_mod.resolve_jobs("auto", gpus=["0", "1"], cuda=True) == 2
    assert grid_mod.resolve_jobs("auto", gpus=[], cuda=True) == 1
    assert grid_mod.resolve_jobs("3", gpus=[], cuda=False) == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(ConfigError, match="--jobs"):
            grid_mod.resolve_jobs(bad, gpus=[], cuda=False)
    # Each of the 4 processes gets one thread.
    cells = expand_grid(load_grid("quick"), tmp_path, seeds=2, overrides={"optim.iters": 3, "optim.milestones": "2"})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = run_grid(cells, jobs=4, command=fake_trainer(), echo=lambda s: None)
    assert result.ok and {json.loads((c.out / "summary.json").read_text())["omp_num_threads"] for c in cells} == {"1"}


def test_cli_jobs_auto_says_what_it_chose(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer())
    monkeypatch.setattr(grid_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    argv = ["grid", "quick", "--runs-dir", str(tmp_path / "runs"), "--seeds", "1", "--iters", "4", "--milestones", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--jobs auto: 2 single-threaded process(es)" in out and "2 at a time" in out
    assert main(argv + ["--jobs", "zero"]) == 2
    assert "--jobs 'zero'" in capsys.readouterr().err


def test_reproduce_emits_the_grid_commands_and_writes_no_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd_file = tmp_path / "cells.txt"
    assert main(["reproduce", "quick", "--runs-dir", str(tmp_path / "runs"), "--seeds", "1",
                 "--emit-commands", str(cmd_file)]) == 0
    assert len(cmd_file.read_text().splitlines()) == 3 and (tmp_path / "cells.slurm").is_file()
    assert "wrote 3 command(s)" in capsys.readouterr().out
    assert not (tmp_path / "reports").exists()


def test_grid_failures_say_why_once_when_alike_and_reproduce_writes_no_empty_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--runs-dir", str(tmp_path / "runs"), "--seeds", "1", "--iters", "4", "--milestones", "2"]
    names = [f"{m}-cifar10-iters=4-milestones=2-s0" for m in ("resnet20", "se_resnet20", "res_se_net20")]
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer(fail=set(names)))
    assert main(["reproduce", "quick", *argv]) == 1
    captured = capsys.readouterr()
    assert "the same error as" in captured.out and "simulated failure" in captured.out
    assert captured.err.count("simulated failure") == 1 and "all 3 failed cells: simulated failure" in captured.err
    assert "no report written" in captured.err and not (tmp_path / "reports").exists()
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer(fail={names[1]}))
    assert main(["grid", "quick", *argv]) == 1
    assert f"FAILED {names[1]}: exit code 3: simulated failure; log" in capsys.readouterr().err


def test_a_grid_with_nothing_left_to_train_says_the_data_was_not_read(tmp_path, monkeypatch, capsys):
    argv = ["grid", "quick", "--runs-dir", str(tmp_path / "runs"), "--seeds", "1", "--iters", "4", "--milestones", "2"]
    monkeypatch.setattr(grid_mod, "_default_command", fake_trainer())
    assert main(argv) == 0
    assert "was not read" not in capsys.readouterr().out
    assert main([*argv, "--data-root", str(tmp_path / "nowhere")]) == 0
    assert f"the data at {tmp_path / 'nowhere'} was not read" in capsys.readouterr().out


def test_failure_line_is_the_last_attempts_error(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("# ressenet grid 1: a\nressenet train: error: old problem\n# ressenet grid 2: a\nstep 1\n"
                   "ressenet train: error: image folder data does not exist; pass --data-root\n")
    assert failure_line(log) == "image folder data does not exist; pass --data-root"
    log.write_text("# ressenet grid 1: a\nTraceback (most recent call last):\n  ...\nKeyError: 'x'\n")
    assert failure_line(log) == "KeyError: 'x'"
