"""Hostile or damaged run directories and config files give one line or a named skip, never a traceback."""
from __future__ import annotations

import json

import pytest

from fixtures_runs import make_run
from ressenet.cli import main as cli_main
from ressenet.engine.config import ConfigError
from ressenet.engine.yamlfile import read_config_file
from ressenet.experiments.gridspec import expand_grid, load_grid
from ressenet.experiments.report import write_report
from ressenet.experiments.runs import collect_runs
from ressenet.experiments.tables import md_cell


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


# A run that, were the bad value accepted, would finish in seconds instead of training for hours.
TINY = ["--model", "resnet20", "--dataset", "synthetic", "--iters", "2", "--batch-size", "8", "--device", "cpu",
        "--no-compile", "--set", "data.train_limit=16", "--set", "data.test_limit=8", "--progress", "none"]


def _alias_bomb(levels: int = 7) -> str:
    """A few hundred bytes of YAML whose value expands ninefold per level of aliases."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_small_in_a_config_and_a_run_directory(tmp_path, capsys):
    import tracemalloc

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("defs:\n" + "".join(f"  {ln}\n" for ln in _alias_bomb().splitlines()) + "optim:\n  lr: *a7\n")
    tracemalloc.start()
    with pytest.raises(ConfigError, match=r"bomb.yaml expands to more than 10,000 values through its aliases") as e:
        read_config_file(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(str(e.value)) < 300 and peak < 50e6
    out = tmp_path / "run"  # the same through a run directory's config.yaml when resuming
    out.mkdir()
    (out / "config.yaml").write_text(_alias_bomb() + "optim:\n  lr: *a7\n")
    assert cli_main(["train", "--model", "resnet20", "--dataset", "synthetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "expands to more than" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text,match", [
    ("optim:\n  lr: true\n", r"optim.lr=True should be a float"),
    ("optim:\n  iters: false\n", r"optim.iters=False should be a int"),
    ("optim:\n  lr: [0.1, 0.2]\n", r"optim.lr=\[0.1, 0.2\] should be a float"),
    ("optim:\n  weight_decay: {a: 1}\n", r"optim.weight_decay=\{'a': 1\} should be a float"),
    ("optim:\n  lr: 0.1\n  lr: 0.2\n", r"key 'lr' appears twice \(line 3\); keep one of them"),
    ("optim:\n  lr: 0.1\noptim:\n  iters: 5\n", r"key 'optim' appears twice \(line 3\)"),
    ("optim:\n  lr: 1e300\n", r"optim.lr=1e\+300 is invalid: expected a positive learning rate within float32"),
    ("optim:\n  weight_decay: 1e300\n", r"optim.weight_decay=1e\+300 is invalid: expected a non-negative value"),
    (f"optim:\n  lr: {'x' * 5000}\n", r"optim.lr='x+\.\.\.x+' is not a valid float"),
], ids=["bool-float", "bool-int", "list", "mapping", "duplicate", "duplicate-section", "lr-1e300", "wd-1e300",
        "long"])
def test_config_values_of_the_wrong_kind_are_one_short_line(tmp_path, capsys, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert cli_main(["train", "--config", str(path), *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400, err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "run").exists()


def test_lr_and_weight_decay_flags_beyond_float32_are_refused(tmp_path, capsys):
    for flag in ("--lr", "--weight-decay"):
        assert cli_main(["train", *TINY, flag, "1e300", "--out", str(tmp_path / "run")]) == 2
        assert "within float32's range" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", ["100000000", ",".join(map(str, range(2000)))], ids=["count", "list"])
def test_absurd_seed_counts_are_refused_before_anything_is_built(tmp_path, capsys, seeds):
    import tracemalloc

    tracemalloc.start()
    assert cli_main(["grid", "quick", "--seeds", seeds, "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert "more than 1,000 seeds" in err and len(err.strip().splitlines()) == 1 and len(err) < 300
    assert peak < 50e6 and not (tmp_path / "runs").exists()


def test_a_grid_over_the_stated_size_is_refused(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: big\nseeds: 1000\ndepths: [20, 32, 44, 56, 110]\n"
                    "models: ['resnet{depth}', 'res_se_net{depth}', 'se_resnet{depth}']\n")
    assert cli_main(["grid", str(grid), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "would have 15,000 cells" in err and "more than the 10,000" in err


@pytest.mark.parametrize("template", ["{model}{seed}{x}", "{model}-{seed.__class__}", "{model}-{seed!r}",
                                      "{model}-{seed:>9}", "{model}-{seed}-{", "{model}-{0}{seed}"])
def test_member_name_allows_only_model_and_seed(tmp_path, capsys, template):
    assert cli_main(["train", *TINY, "--model", "resnet20,se_resnet20", "--out", str(tmp_path / "runs"),
                     "--member-name", template]) == 2
    err = capsys.readouterr().err
    assert "no other {...} field" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("bad", [None, float("nan"), "91.0"], ids=["null", "nan", "text"])
def test_a_run_without_a_final_top1_is_named_and_not_counted(tmp_path, capsys, bad):
    import csv

    runs = tmp_path / "runs"
    for seed, top1 in ((1, 90.0), (2, 92.0), (3, 99.0)):
        make_run(runs, f"resnet20-cifar10-s{seed}", model="resnet20", seed=seed, top1=top1, best_top1=top1 + 1)
    broken = runs / "resnet20-cifar10-s3" / "summary.json"
    s = json.loads(broken.read_text())
    s["test_top1"] = bad
    broken.write_text(json.dumps(s))
    assert cli_main(["report", str(runs), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "resnet20-cifar10-s3/summary.json: test_top1 is" in err and "skipped" in err
    rows = [r for r in csv.DictReader((tmp_path / "rep" / "groups.csv").open()) if r["model"] == "resnet20"]
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["seeds"] == "1 2"
    assert float(rows[0]["final_top1_mean"]) == 91.0 and float(rows[0]["best_on_test_top1_mean"]) == 92.0


def test_a_grid_cell_whose_summary_has_no_result_is_not_done(tmp_path):
    cell = expand_grid(load_grid("quick"), tmp_path, seeds=1)[0]
    out = make_run(tmp_path, cell.name, model=cell.model, config=cell.config)
    s = json.loads((out / "summary.json").read_text())
    del s["config"]
    s["test_top1"] = "n/a"
    (out / "summary.json").write_text(json.dumps(s))
    from ressenet.experiments.cells import cell_state

    st = cell_state(cell)
    assert st.state == "conflict" and "test_top1 is 'n/a', not a finite number" in st.detail
    assert "delete it" in st.detail


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("not a folder")
    runs = tmp_path / "runs"
    make_run(runs, "good", model="resnet20", seed=1)
    for argv in (["train", *TINY, "--out", str(file)], ["report", str(runs), "--out", str(file), "--no-figures"]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Errno" not in err, err
        assert err.endswith(f": error: --out {file} names a file, not a folder; choose another --out\n"), err
    assert cli_main(["train", *TINY, "--model", "resnet20,se_resnet20", "--out", str(file)]) == 2  # the members' folders
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"lies under {file}, which is a file, not a folder; choose another --out" in err
    assert file.read_text() == "not a folder"
