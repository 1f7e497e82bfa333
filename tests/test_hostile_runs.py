"""Hostile or damaged run directories and config files give one line or a named skip, never a traceback."""
from __future__ import annotations

import json

import pytest

from fixtures_runs import make_run
from ressenet.cli import main as cli_main
from ressenet.engine.config import ConfigError, read_config_file
from ressenet.experiments.grid import expand_grid, load_grid
from ressenet.experiments.report import write_report
from ressenet.experiments.runs import collect_runs, md_cell


def test_non_utf8_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"optim:\n  iters: 5\n  lr: \xff\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not UTF-8 text \(byte 0xff"):
        read_config_file(bad)


def test_report_skips_damaged_runs_with_a_named_warning(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "good", model="resnet20", seed=1)
    bad_model = make_run(runs, "listmodel", model="resnet20", seed=2)
    s = json.loads((bad_model / "summary.json").read_text())
    s["model"] = ["resnet20"]
    (bad_model / "summary.json").write_text(json.dumps(s))
    bad_metrics = make_run(runs, "binary", model="resnet20", seed=3)
    (bad_metrics / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    found, _, problems = collect_runs(runs)
    assert [r.rel for r in found] == ["good"]
    assert any("listmodel" in p and "not a model name" in p for p in problems)
    assert any("binary" in p and "metrics.jsonl is unreadable" in p for p in problems)
    write_report(runs, tmp_path / "report", figures=False)  # does not fail


def test_names_in_tables_are_escaped():
    assert md_cell("a|b\nc <b>x</b>") == "a\\|b c &lt;b&gt;x&lt;/b&gt;"


def test_grid_names_never_leave_the_runs_directory(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text('name: g\nseeds: [1]\nmodels: [resnet20]\ndatasets: ["../../../X"]\n')
    assert cli_main(["grid", str(grid), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert "data.dataset='../../../X' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "X").exists() and not (tmp_path / "runs").exists()
    cells = expand_grid(load_grid("quick"), tmp_path / "runs")
    assert all(c.out.resolve().parent == (tmp_path / "runs").resolve() for c in cells)
