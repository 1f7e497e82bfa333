"""Hostile and careless input to the readers and writers: grid names, event files, the README, committed results.

Each test names what it guards (security, data loss); nothing here trains.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fixtures_runs import make_run

from ressenet.cli import main

REPO = Path(__file__).resolve().parents[1]


def _grid_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(f"name: {name!r}\nmodels: [resnet20]\ndatasets: [synthetic]\nseeds: 1\n"
                    "config: {optim.iters: 2}\n".replace("'", '"'))
    return path


# --------------------------------------------------------------------------------------------------------------
# A grid's name
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x\\ntouch PWNED\\n#", "x; touch PWNED", "$(touch PWNED)"])
def test_security_grid_name_never_reaches_the_slurm_script(tmp_path, capsys, name):
    grid = _grid_file(tmp_path, name)
    cmds = tmp_path / "cmds.txt"
    rc = main(["grid", str(grid), "--runs-dir", str(tmp_path / "runs"), "--emit-commands", str(cmds)])
    err = capsys.readouterr().err
    assert rc == 2 and "grid name" in err and "not a safe name" in err and len(err.strip().splitlines()) == 1
    assert not cmds.exists() and not cmds.with_suffix(".slurm").exists()


def test_security_slurm_script_holds_only_safe_job_names(tmp_path):
    from ressenet.engine.config import ConfigError
    from ressenet.experiments.gridspec import expand_grid, load_grid
    from ressenet.experiments.jobs import emit_commands

    cells = expand_grid(load_grid(_grid_file(tmp_path, "ok")), tmp_path / "runs")
    with pytest.raises(ConfigError, match="not safe"):
        emit_commands(cells, tmp_path / "c.txt", job_name="x\ntouch PWNED")
    _, script, _ = emit_commands(cells, tmp_path / "c.txt", job_name="ressenet-ok")
    text = script.read_text()
    assert "sbatch c.slurm" in text and "c.txt.slurm" not in text  # the comment names the file written


@pytest.mark.parametrize("name", ["/some/dir", "../../OUTSIDE", "..", ".hidden", "a/b"])
def test_security_grid_name_cannot_move_default_folders_outside(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    grid = _grid_file(tmp_path, name)
    (tmp_path / "report.md").write_text("mine")
    rc = main(["reproduce", str(grid), "--dry-run"])
    assert rc == 2 and "not a safe name" in capsys.readouterr().err
    rc = main(["reproduce", str(grid)])
    assert rc == 2 and (tmp_path / "report.md").read_text() == "mine"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------------------------------------------
# TensorBoard event files
# --------------------------------------------------------------------------------------------------------------
def test_data_loss_event_log_keeps_other_tools_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from ressenet.engine.tensorboard import EVENTS_GLOB, EventLog

    foreign = tmp_path / "events.out.tfevents.1700000000.host.123.0"
    foreign.write_bytes(b"another tool's events")
    (tmp_path / "events.out.tfevents.dir").mkdir()  # a directory with an event file's name: left alone
    log = EventLog(tmp_path, [{"kind": "train", "iter": 1, "train_loss": 1.0}])
    log.close()
    assert foreign.read_bytes() == b"another tool's events"
    ours = [p for p in tmp_path.glob(EVENTS_GLOB) if p.is_file() and p != foreign]
    assert len(ours) == 1
    EventLog(tmp_path, []).close()  # a rewrite replaces this package's own file only
    assert foreign.exists() and len([p for p in tmp_path.glob(EVENTS_GLOB) if p.is_file()]) == 2


# --------------------------------------------------------------------------------------------------------------
# The findings page and the README
# --------------------------------------------------------------------------------------------------------------
def _runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    make_run(runs, "resnet20-cifar10-s0", model="resnet20")
    return runs


def test_data_loss_findings_onto_the_readme_is_refused_before_writing(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = "# Mine\n\n<!-- findings:start -->\n<!-- findings:end -->\n\nhand-written\n"
    readme.write_text(text)
    rc = main(["report", str(_runs(tmp_path)), "--findings", str(readme), "--readme", str(readme), "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 2 and "both name" in err and readme.read_text() == text


def test_data_loss_readme_without_markers_writes_nothing(tmp_path, capsys):
    readme, page = tmp_path / "README.md", tmp_path / "findings.md"
    readme.write_text("# no markers\n")
    rc = main(["report", str(_runs(tmp_path)), "--findings", str(page), "--readme", str(readme), "--no-figures"])
    assert rc == 2 and "markers" in capsys.readouterr().err
    assert not page.exists() and readme.read_text() == "# no markers\n"


# --------------------------------------------------------------------------------------------------------------
# Committed results carry no machine paths
# --------------------------------------------------------------------------------------------------------------
# A path that starts at the root (not a URL, not inside a relative path): /work/..., /home/..., C:/ is not expected.
ABSOLUTE = re.compile(r"(?<![\w.~:/-])/[A-Za-z0-9_.-]+/[^\s\"',)]*")
REWRITE = ("PYTHONPATH=src python3 -c \"import os,pathlib,sys; from ressenet.engine.rundir import portable_paths as p; "
           "[(f.with_name(f.name+'.tmp').write_text(p(f.read_text(),sys.argv[1])), os.replace(f.with_name(f.name+"
           "'.tmp'),f)) for f in pathlib.Path('results').rglob('*') if f.is_file() and p(f.read_text(),sys.argv[1])"
           "!=f.read_text()]\" /path/of/the/training/checkout")


def test_committed_results_hold_no_absolute_path():
    found = []
    for f in sorted((REPO / "results").rglob("*")):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".csv", ".md", ".log", ".txt"):
            m = ABSOLUTE.search(f.read_text(encoding="utf-8", errors="replace"))
            if m:
                found.append(f"{f.relative_to(REPO)}: {m.group(0)}")
    assert not found, f"machine paths in committed results ({len(found)} files), e.g. {found[:3]}; rewrite: {REWRITE}"


def test_run_files_record_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    import json

    import yaml

    from ressenet.engine.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "runs" / "a")
    run.path.mkdir(parents=True)
    tree = {"run": {"out": str(tmp_path / "runs" / "a")}, "data": {"data_root": "/elsewhere/x.tar.gz"},
            "meta": {"data": f"image folder {tmp_path}/d.tar.gz (10 classes)"}}
    run.write_config(tree)
    run.write_summary({"config": tree})
    for got in (yaml.safe_load(run.config_file.read_text()), json.loads(run.summary_file.read_text())["config"]):
        assert got["run"]["out"] == "runs/a" and got["meta"]["data"] == "image folder d.tar.gz (10 classes)"
        assert got["data"]["data_root"] == "/elsewhere/x.tar.gz"  # outside the working directory: as given
