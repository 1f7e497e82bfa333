"""Hostile and careless input to the readers and writers: grid names, event files, the README, committed results.

Each test names what it guards (security, data loss); nothing here trains.
"""
from __future__ import annotations

import os
import re
import subprocess
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


@pytest.mark.parametrize("where", ["value", "runs-dir"])
def test_security_a_line_break_in_a_grid_value_never_splits_a_command(tmp_path, capsys, where):
    # The commands file holds one command per line and the Slurm array runs line i: a value's line break would
    # leave its tail ("touch PWNED") a line of its own, which a shell reading the file runs.
    grid, runs = _grid_file(tmp_path, "ok"), tmp_path / "runs"
    if where == "value":
        grid.write_text(grid.read_text().replace("{optim.iters: 2}",
                                                 '{optim.iters: 2, data.data_root: "x\\ntouch PWNED\\n#"}'))
    else:
        runs = tmp_path / "r\ntouch PWNED"
    cmds = tmp_path / "cmds.txt"
    rc = main(["grid", str(grid), "--runs-dir", str(runs), "--emit-commands", str(cmds)])
    err = capsys.readouterr().err
    assert rc == 2 and "line break" in err and len(err.strip().splitlines()) == 1
    assert not cmds.exists() and not cmds.with_suffix(".slurm").exists()


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


RESULT_FOLDERS = ("results", "benchmarks/results")  # the measured results the repository publishes


def _results_files() -> list[Path]:
    """The files under the result folders that git commits (tracked, or new and not ignored): a run still training
    here, or its git-ignored train.log, is not committed; on a fresh clone this is every file there."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z",
                              *RESULT_FOLDERS], cwd=REPO, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist): every file
        return sorted(f for folder in RESULT_FOLDERS for f in (REPO / folder).rglob("*") if f.is_file())
    return sorted(REPO / name for name in out.split("\0") if name)


def test_committed_results_hold_no_absolute_path():
    found = []
    for f in _results_files():
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".csv", ".md", ".txt"):
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


# --------------------------------------------------------------------------------------------------------------
# One reader per run file: damaged runs skipped by commands over many runs, refused by commands on one
# --------------------------------------------------------------------------------------------------------------
def _edit_summary(run: Path, **fields) -> None:
    import json

    s = json.loads((run / "summary.json").read_text())
    s.update(fields)
    (run / "summary.json").write_text(json.dumps(s).replace('"__HUGE__"', "9" * 400))


def _report(tmp_path: Path, runs: Path, capsys) -> tuple[int, str]:
    rc = main(["report", str(runs), "--out", str(tmp_path / "rep"), "--no-figures"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("fields,named", [({"test_top5": "__HUGE__"}, "test_top5"), ({"data": "text"}, "data is a str"),
                                          ({"test_top1": 250.0}, "test_top1"), ({"iters": 1.5}, "iters")])
def test_report_skips_a_damaged_summary_naming_file_and_field(tmp_path, capsys, fields, named):
    runs = tmp_path / "runs"
    make_run(runs, "good", model="resnet20", seed=1)
    _edit_summary(make_run(runs, "bad", model="resnet20", seed=2), **fields)
    rc, err = _report(tmp_path, runs, capsys)
    assert rc == 0 and f"bad{os.sep}summary.json: {named}" in err and "skipped" in err
    assert "Traceback" not in err


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


@pytest.fixture()
def no_hang():
    """A reader that blocks on a FIFO fails the test after 60 s instead of hanging the suite."""
    import signal

    def fail(*_):
        raise TimeoutError("a reader blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_special_files_are_refused_not_read(tmp_path, capsys, no_hang):
    from ressenet.engine.runfiles import RunFileError, read_metrics

    runs = tmp_path / "runs"
    make_run(runs, "good", model="resnet20", seed=1)
    _fifo(make_run(runs, "fifo", model="resnet20", seed=2) / "metrics.jsonl")
    zero = make_run(runs, "zero", model="resnet20", seed=3) / "metrics.jsonl"
    zero.unlink()
    zero.symlink_to("/dev/zero")
    rc, err = _report(tmp_path, runs, capsys)
    assert rc == 0 and "not a regular file" in err and "fifo" in err and "zero" in err
    with pytest.raises(RunFileError, match="not a regular file"):
        read_metrics(zero)


def test_a_run_file_beyond_its_size_bound_is_skipped_unread(tmp_path, capsys, no_hang):
    # A sparse file: 2 GiB on paper, nothing on disk; reading it whole would take the memory a MemoryError needs.
    from ressenet.engine.runfiles import MAX_BYTES

    runs = tmp_path / "runs"
    make_run(runs, "good", model="resnet20", seed=1)
    big = make_run(runs, "big", model="resnet20", seed=2) / "metrics.jsonl"
    with big.open("r+b") as f:
        f.truncate(MAX_BYTES[".jsonl"] * 2)
    rc, err = _report(tmp_path, runs, capsys)
    assert rc == 0 and "big" in err and f"{MAX_BYTES['.jsonl']:,}" in err and "skipped" in err
    assert main(["grid", "quick", "--runs-dir", str(runs), "--dataset", "synthetic", "--dry-run"]) in (0, 2)


def test_tensorboard_skips_special_and_huge_metrics(tmp_path, capsys, no_hang):
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    _fifo(make_run(runs, "a-fifo", model="resnet20", seed=1) / "metrics.jsonl")
    huge = make_run(runs, "b-huge", model="resnet20", seed=2)
    with (huge / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "iter": 200, "train_loss": ' + "9" * 400 + "}\n")
        f.write('{"kind": "train", "iter": 1e999, "train_loss": 1.0}\n')
    make_run(runs, "c-good", model="resnet20", seed=3)
    assert main(["tensorboard", str(runs)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "not a regular file" in text and "Traceback" not in text
    assert len(list((runs / "c-good").glob("events.out.tfevents.*"))) == 1  # the runs after the damaged one too
    assert len(list((huge).glob("events.out.tfevents.*"))) == 1


def _cell(tmp_path: Path):
    from ressenet.experiments.gridspec import expand_grid, load_grid

    return expand_grid(load_grid(_grid_file(tmp_path, "g")), tmp_path / "runs")[0]


def test_dry_run_says_conflict_for_a_torn_config(tmp_path):
    from ressenet.experiments.cells import cell_state

    cell = _cell(tmp_path)
    cell.out.mkdir(parents=True)
    (cell.out / "config.yaml").write_text("model:\n  name: resnet20\noptim: {iters: [")
    st = cell_state(cell)
    assert st.state == "conflict" and "config.yaml" in st.detail


def test_dry_run_survives_special_and_overflowing_metrics(tmp_path, no_hang):
    from ressenet.experiments.cells import cell_state

    cell = _cell(tmp_path)
    cell.out.mkdir(parents=True)
    (cell.out / "metrics.jsonl").write_text('{"kind": "train", "iter": 4}\n{"kind": "train", "iter": 1e999}\n')
    st = cell_state(cell)
    assert st.state == "partial" and "iteration 4/" in st.detail
    _fifo(cell.out / "metrics.jsonl")
    st = cell_state(cell)  # returns at once: a FIFO is not read
    assert st.state == "conflict" and "not a regular file" in st.detail


def test_grid_counts_a_cell_whose_path_is_a_file(tmp_path, capsys):
    from ressenet.experiments.cells import cell_state

    cell = _cell(tmp_path)
    cell.out.parent.mkdir(parents=True)
    cell.out.write_text("not a folder")
    st = cell_state(cell)
    assert st.state == "conflict" and "is a file" in st.detail
    runs_file = tmp_path / "runs-file"
    runs_file.write_text("x")
    rc = main(["grid", str(_grid_file(tmp_path, "g")), "--runs-dir", str(runs_file), "--dry-run"])
    assert rc == 0 and "conflict" in capsys.readouterr().out
    rc = main(["grid", str(_grid_file(tmp_path, "g")), "--runs-dir", str(runs_file)])
    assert rc == 1 and "1 in conflict" in capsys.readouterr().out


def test_resume_drops_a_metrics_line_beyond_int64(tmp_path):
    from ressenet.engine.records import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 2}\n{"kind": "train", "iter": 1e999}\n{"iter": ' + "9" * 30 + "}\n")
    MetricsLog(path, True, 2)
    assert path.read_text() == '{"kind": "train", "iter": 2}\n'


# --------------------------------------------------------------------------------------------------------------
# Export and the weights header: one rule for writer and reader
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from tiny import tiny_config

    from ressenet.engine.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(out, **{"run.compile": None}))
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.mark.parametrize("value,named", [("99.9", "test_top1"), (float("nan"), "test_top1")])
def test_export_refuses_a_damaged_summary_before_writing(trained, tmp_path, capsys, value, named):
    run = _copy(trained, tmp_path)
    _edit_summary(run, test_top1=value)
    out = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"summary.json: {named} is" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".md").exists()


@pytest.mark.parametrize("edit,named", [("drop test_top1", "test_top1 is None"), ("data text", "data is a str")])
def test_export_refuses_a_summary_without_a_result_or_with_bad_data(trained, tmp_path, capsys, edit, named):
    import json

    run = _copy(trained, tmp_path)
    s = json.loads((run / "summary.json").read_text())
    if edit == "drop test_top1":
        del s["test_top1"]
    else:
        s["data"] = "text"
    (run / "summary.json").write_text(json.dumps(s))
    out = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"summary.json: {named}" in err and len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("field,value", [("mean", [0.5, 0.5]), ("std", [0.2, 0.0, 0.2]), ("std", [0.2, -1, 0.2]),
                                         ("mean", ["a", "b", "c"])])
def test_export_writes_no_file_its_loader_rejects(trained, tmp_path, capsys, field, value):
    import yaml

    run = _copy(trained, tmp_path)
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["meta"][field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    out = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: meta" in err and field in err and not out.exists()


@pytest.mark.parametrize("field,value", [("std", [float("nan"), 0.2, 0.2]), ("std", [1e-300, 0.2, 0.2]),
                                         ("mean", [float("nan"), 0.5, 0.5]), ("mean", [float("inf"), 0.5, 0.5])])
def test_weights_header_with_degenerate_normalisation_is_refused(trained, tmp_path, field, value):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ressenet.errors import RessenetError
    from ressenet.experiments.export import export_run
    from ressenet.weights import read_header

    weights = export_run(trained, tmp_path / "w.safetensors")["weights"]
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata()
    header = json.loads(meta["ressenet"])
    header[field] = value
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(weights), str(edited), metadata={**meta, "ressenet": json.dumps(header)})
    with pytest.raises(RessenetError, match=f"malformed {field}"):
        read_header(edited)


def test_security_model_card_escapes_names_and_quotes_the_command(trained, tmp_path):
    import shutil
    import shlex

    from ressenet.experiments.export import export_run

    run = Path(shutil.copytree(trained, tmp_path / "x`<img src=x onerror=alert(1)>|fake|row"))
    out = tmp_path / "$(touch${IFS}pwned).safetensors"
    card = Path(export_run(run, out)["card"]).read_text()
    assert "<img" not in card and "&lt;img" in card and "\\|fake\\|row" in card
    line = next(ln for ln in card.splitlines() if ln.startswith("ressenet eval --weights"))
    assert shlex.split(line)[3] == out.name  # one argument, no substitution when pasted into a shell


def _edited(trained: Path, tmp_path: Path, *, header: dict | None = None, tensors=None) -> Path:
    """An exported weights file with header fields replaced and tensors changed by ``tensors(dict)``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ressenet.experiments.export import export_run

    weights = export_run(trained, tmp_path / "w.safetensors", overwrite=True)["weights"]
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata()
    h = {**json.loads(meta["ressenet"]), **(header or {})}
    state = load_file(weights)
    if tensors is not None:
        tensors(state)
    edited = tmp_path / "edited.safetensors"
    save_file(state, str(edited), metadata={**meta, "ressenet": json.dumps(h)})
    return edited


def test_weights_header_class_count_is_checked_before_building(trained, tmp_path, monkeypatch):
    import ressenet
    from ressenet.errors import RessenetError
    from ressenet.models import registry

    edited = _edited(trained, tmp_path, header={"num_classes": 100_000_000})
    monkeypatch.setattr(registry, "create_model", lambda *a, **k: pytest.fail("built a model from a bad header"))
    with pytest.raises(RessenetError, match="100000000 classes but its fc.weight"):
        ressenet.load_pretrained(edited)


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update({"fc.weight": s["fc.weight"].double()}), "stored as F64"),
    (lambda s: s.update({"fc.weight": s["fc.weight"].to(__import__("torch").int8)}), "stored as I8"),
    (lambda s: s.update({"fc.weight": s["fc.weight"].view(__import__("torch").int32)}), "stored as I32"),
    (lambda s: s.update({"fc.weight": s["fc.weight"] > 0}), "stored as BOOL"),
    (lambda s: s["fc.weight"].view(-1)[0].fill_(float("nan")), "NaN or infinite"),
    (lambda s: s[next(k for k in s if k.endswith("running_var"))].fill_(-1.0), "negative variance"),
])
def test_weights_with_other_dtypes_or_values_are_refused(trained, tmp_path, change, match):
    import ressenet
    from ressenet.errors import RessenetError

    with pytest.raises(RessenetError, match=match):
        ressenet.load_pretrained(_edited(trained, tmp_path, tensors=change))


def test_a_stalled_download_times_out_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import http.server
    import threading

    import ressenet
    from ressenet import weights
    from ressenet.errors import RessenetError

    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # headers, then nothing
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            release.wait(10)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT", 1.0)
    url = f"http://user:secret@127.0.0.1:{server.server_address[1]}/w.safetensors#sha256={'a' * 64}"
    try:
        with pytest.raises(RessenetError, match="no data for 1 s") as e:
            ressenet.load_pretrained(url, cache_dir=tmp_path)
    finally:
        release.set()
        server.shutdown()
    assert "secret" not in str(e.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_killed_downloads_old_temporary_file_is_removed_by_the_next(tmp_path):
    # SIGKILL leaves ".NAME.XXXX.part" in the cache; the next download of NAME removes those older than an hour
    # (younger ones may be another process's download in progress, and stay).
    import time

    from ressenet.errors import RessenetError
    from ressenet.weights import STALE_PART_SECONDS, cached_path, fetch_weights

    digest = "0" * 64
    folder = cached_path("w.safetensors", digest, tmp_path).parent
    folder.mkdir(parents=True)
    old, young = folder / ".w.safetensors.killed.part", folder / ".w.safetensors.running.part"
    old.write_bytes(b"x" * 100)
    young.write_bytes(b"y")
    then = time.time() - STALE_PART_SECONDS - 60
    os.utime(old, (then, then))
    with pytest.raises(RessenetError, match="cannot download"):  # nothing listens on port 9: fails at once
        fetch_weights(f"http://127.0.0.1:9/w.safetensors#sha256={digest}", cache_dir=tmp_path)
    assert not old.exists() and young.exists()
    assert sorted(p.name for p in folder.iterdir()) == [young.name]  # the failed download's own file is gone too


def test_eval_weights_refuses_other_class_names_as_eval_checkpoint_does(trained, tmp_path, capsys):
    import json

    from safetensors import safe_open

    edited = _edited(trained, tmp_path)
    with safe_open(str(edited), framework="pt") as f:
        header = json.loads(f.metadata()["ressenet"])
    renamed = {**header["data"], "classes": [f"class{i}" for i in range(10)]}
    other = _edited(trained, tmp_path / "o", header={"data": renamed})
    assert main(["eval", "--weights", str(other), "--device", "cpu"]) == 2
    assert "other classes" in capsys.readouterr().err
    assert main(["eval", "--weights", str(other), "--device", "cpu", "--allow-other-classes"]) == 0
    assert main(["eval", "--weights", str(other), "--device", "cpu", "--batch-size", "0"]) == 2
    assert "--batch-size 0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Rough edges
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["-1", ""])
def test_grid_dry_run_checks_jobs(tmp_path, capsys, jobs):
    rc = main(["grid", str(_grid_file(tmp_path, "g")), "--runs-dir", str(tmp_path / "runs"), "--dry-run",
               "--jobs", jobs])
    assert rc == 2 and "--jobs" in capsys.readouterr().err


def test_a_symlinked_cell_directory_is_named_as_a_link(tmp_path):
    from ressenet.experiments.cells import cell_state

    cell = _cell(tmp_path)
    cell.out.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    cell.out.symlink_to(tmp_path / "elsewhere")
    st = cell_state(cell)
    assert st.state == "conflict" and "symbolic link" in st.detail


def test_a_symlinked_cell_directory_is_that_cells_conflict_not_the_grids(tmp_path, capsys):
    # Made before the grid expands, pointing outside --runs-dir: the grid lists it, and runs the other cells.
    grid, runs = _grid_file(tmp_path, "ok"), tmp_path / "runs"
    grid.write_text(grid.read_text().replace("seeds: 1", "seeds: 2"))
    runs.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (runs / "resnet20-synthetic-s0").symlink_to(tmp_path / "elsewhere")
    assert main(["grid", str(grid), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "symbolic link" in out and "check the grid" not in out and "1 pending, 1 conflict" in out


@pytest.mark.parametrize("field,value,named", [("trained_with", "x", "trained_with"),
                                               ("options", {"se_reduction": True}, "options.se_reduction")])
def test_weights_header_field_types_are_checked(trained, tmp_path, field, value, named):
    from ressenet.errors import RessenetError
    from ressenet.weights import read_header

    with pytest.raises(RessenetError, match=f"malformed {named}"):
        read_header(_edited(trained, tmp_path, header={field: value}))


def test_eval_weights_on_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert main(["eval", "--weights", str(tmp_path), "--device", "cpu"]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_create_model_and_load_pretrained_refuse_slips_in_one_line(tmp_path, monkeypatch):
    import torch

    import ressenet
    from ressenet.errors import RessenetError

    with pytest.raises(ValueError, match="pretrained=0"):
        ressenet.create_model("resnet20", pretrained=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RessenetError, match="no CUDA device"):
        ressenet.load_pretrained(tmp_path / "w.safetensors", map_location="cuda")


def test_export_overwrite_onto_a_folder_writes_into_it_not_over_it(trained, tmp_path, capsys):
    # --out naming a folder is where the hash-named file goes (as for weights/); the folder is never replaced.
    folder = tmp_path / "w.safetensors"
    folder.mkdir()
    assert main(["export", str(trained), "--out", str(folder), "--overwrite"]) == 0
    files = sorted(p.name for p in folder.iterdir())
    assert folder.is_dir() and len(files) == 2 and files[1].endswith(".safetensors") and files[0].endswith(".md")


@pytest.mark.parametrize("overwrite", [False, True])
def test_data_loss_a_foreign_config_yaml_is_not_offered_for_deletion(tmp_path, overwrite):
    from ressenet.engine.config import Config, apply_overrides
    from ressenet.engine.rundir import prepare_run_dir
    from ressenet.errors import RessenetError

    out = tmp_path / "theirs"
    out.mkdir()
    (out / "config.yaml").write_text("name: their-experiment\nepochs: 3\n")
    (out / "summary.json").write_text('{"theirs": true}')
    cfg = apply_overrides(Config(), {"model.name": "resnet20", "run.out": str(out)}).validate()
    with pytest.raises(RessenetError, match="not a run config of ressenet") as e:
        prepare_run_dir(cfg, overwrite, True)
    assert "--overwrite" not in str(e.value)
    assert (out / "summary.json").read_text() == '{"theirs": true}' and (out / "config.yaml").exists()


def test_analyze_out_naming_a_file_is_refused_before_the_analysis(tmp_path, capsys, monkeypatch):
    from ressenet.analysis import pipeline

    monkeypatch.setattr(pipeline, "analyze", lambda *a, **k: pytest.fail("analysed before checking --out"))
    target = tmp_path / "out"
    target.write_text("a file")
    assert main(["analyze", str(tmp_path), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Errno" not in err and target.read_text() == "a file"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "\"99.9\"", "250"])
def test_a_metrics_accuracy_that_is_no_percentage_is_dropped(value):
    # export --allow-unfinished reads the last evaluation from metrics.jsonl: a NaN there must not become "nan%".
    from ressenet.engine.runfiles import parse_metrics_line

    rec = parse_metrics_line(f'{{"kind": "eval", "iter": 8, "test_top1": {value}, "test_top5": 99.0}}')
    assert rec is not None and "test_top1" not in rec and rec["test_top5"] == 99.0


def test_data_loss_emit_commands_never_replaces_a_file(tmp_path, capsys):
    # --emit-commands FILE and FILE.slurm may be someone's files: refused in one line, both left as they were.
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nseeds: 1\nmodels: [resnet20]\ndatasets: [synthetic]\n")
    for name in ("cmds.txt", "cmds.slurm"):
        other = tmp_path / name
        other.write_text("mine\n")
        rc = main(["grid", str(grid), "--runs-dir", str(tmp_path / "runs"), "--emit-commands",
                   str(tmp_path / "cmds.txt")])
        assert rc == 2 and f"{other} exists" in capsys.readouterr().err and other.read_text() == "mine\n"
        other.unlink()
    assert main(["grid", str(grid), "--runs-dir", str(tmp_path / "runs"), "--emit-commands",
                 str(tmp_path / "cmds.txt")]) == 0
    assert (tmp_path / "cmds.txt").read_text().count("ressenet train") == 1 and (tmp_path / "cmds.slurm").is_file()


def test_a_missing_dataset_names_a_command_that_fetches_it_from_any_command(tmp_path):
    # eval has no --download: the hint names `ressenet data download`, which works wherever the error appears.
    from ressenet.data import DataError
    from ressenet.data.datasets import load_datasets

    with pytest.raises(DataError, match=r"ressenet data download --dataset cifar10 --data-root DIR") as e:
        load_datasets("cifar10", tmp_path)
    assert len(str(e.value).splitlines()) == 1


def test_the_report_data_table_gives_each_runs_own_split_sizes(tmp_path):
    # A label's runs with another split (here a 45,000 / 5,000 validation split) get their own row, not the first's.
    from fixtures_runs import DATA

    from ressenet.experiments.report import write_report

    runs = tmp_path / "runs"
    make_run(runs, "a", model="resnet20", seed=0)
    make_run(runs, "b", model="resnet20", seed=1, data={**DATA["cifar10"], "train_size": 45000, "val_size": 5000})
    text = write_report(runs, tmp_path / "report", figures=False).report.read_text()
    data = text[text.index("## Data"):].split("\n\n")[1]
    assert "| 50000/0/10000 | 1 |" in data and "| 45000/5000/10000 | 1 |" in data


def test_resuming_a_compiled_run_with_no_compile_says_so():
    # The choice a run started with changes only when asked, and then not silently: the kernels change.
    from types import SimpleNamespace

    import torch

    from ressenet.engine.config import load_config
    from ressenet.engine.setup import resolve_settings

    data = SimpleNamespace(train=SimpleNamespace(description="d"), fingerprint="f", mean=(0.5,) * 3, std=(0.25,) * 3)
    cfg = load_config(None, {"run.compile": False, "run.precision": "fp32"})
    said = r"started compiled and resumes eager, as --no-compile asks.*meta.compile now records False"
    with pytest.warns(UserWarning, match=said):
        s = resolve_settings(cfg, torch.device("cpu"), data, {"compile": "default", "precision": "fp32"})
    assert s.compile is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded choice kept (no flag): nothing to say
        resolve_settings(load_config(None, {"run.precision": "fp32"}), torch.device("cpu"), data,
                         {"compile": False, "precision": "fp32"})


def test_a_deeply_nested_weights_header_is_one_line(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ressenet.errors import RessenetError
    from ressenet.experiments.export import export_run
    from ressenet.weights import read_header

    weights = export_run(trained, tmp_path / "w.safetensors", overwrite=True)["weights"]
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata()
    deep = tmp_path / "deep.safetensors"
    nested = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file(load_file(weights), str(deep), metadata={**meta, "ressenet": nested})
    with pytest.raises(RessenetError, match="nested too deeply") as e:
        read_header(deep)
    assert len(str(e.value).splitlines()) == 1


def test_tensorboard_out_naming_a_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    make_run(runs, "a", model="resnet20")
    (tmp_path / "f").write_text("x")
    assert main(["tensorboard", str(runs), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a file, not a folder" in err[0] and (tmp_path / "f").read_text() == "x"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
def test_tensorboard_on_a_read_only_run_skips_it_in_one_line(tmp_path, capsys):
    # Root writes through permission bits, so the folder is made immutable (chattr +i), which binds root too.
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    locked, free = make_run(runs, "a", model="resnet20"), make_run(runs, "b", model="resnet20", seed=2)
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: no way to make a folder read-only for this user")
    try:
        assert main(["tensorboard", str(runs)]) == 0
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "Exception" not in out.err
    line = next(x for x in out.out.splitlines() if x.startswith("a:"))
    assert "cannot write event files" in line and "--out DIR" in line
    assert not list(locked.glob("events.out.tfevents.*")) and len(list(free.glob("events.out.tfevents.*"))) == 1


def test_tensorboard_a_folder_named_like_an_event_file_is_no_event_file(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    run = make_run(runs, "a", model="resnet20")
    odd = run / "events.out.tfevents.1.host.ressenet"
    odd.mkdir()
    (odd / "keep").write_text("x")
    assert main(["tensorboard", str(runs)]) == 0
    assert "records ->" in capsys.readouterr().out  # converted, not "has event files already"
    assert (odd / "keep").read_text() == "x"
    assert len([p for p in run.glob("events.out.tfevents.*") if p.is_file()]) == 1
    assert main(["tensorboard", str(runs), "--overwrite"]) == 0  # rewriting leaves the folder alone too
    assert (odd / "keep").read_text() == "x"


def test_tensorboard_says_whose_event_files_a_run_holds(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    run = make_run(runs, "a", model="resnet20")
    foreign = run / "events.out.tfevents.1.other-tool"
    foreign.write_bytes(b"theirs")
    assert main(["tensorboard", str(runs)]) == 0
    assert "another tool's event files" in capsys.readouterr().out
    assert main(["tensorboard", str(runs), "--overwrite"]) == 0
    assert foreign.read_bytes() == b"theirs" and len(list(run.glob("events.out.tfevents.*.ressenet"))) == 1
    assert main(["tensorboard", str(runs)]) == 0
    assert "has event files already" in capsys.readouterr().out


def test_tensorboard_an_iteration_beyond_int64_skips_that_line(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from ressenet.engine.tensorboard import read_metrics

    runs = tmp_path / "runs"
    run = make_run(runs, "a", model="resnet20")
    before = len(read_metrics(run / "metrics.jsonl"))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "iter": ' + str(2 ** 63) + ', "train_loss": 1.0}\n')
    assert len(read_metrics(run / "metrics.jsonl")) == before  # a damaged line, as resume reads it
    assert main(["tensorboard", str(runs)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "records ->" in out.out


@pytest.mark.parametrize("name", ["..", "a" * 240, "a" * 300])
def test_security_a_url_with_credentials_or_an_odd_name_fails_in_one_line_without_echoing_them(tmp_path, name):
    # Nothing listens on port 9 of this host: the download fails at once, and the message neither shows the password
    # nor trips on a file name that cannot be a cache entry ("..", or longer than a file name may be).
    from ressenet.errors import RessenetError
    from ressenet.weights import fetch_weights

    url = f"http://user:secret@127.0.0.1:9/{name}#sha256={'0' * 64}"
    with pytest.raises((RessenetError, OSError)) as e:
        fetch_weights(url, cache_dir=tmp_path)
    text = str(e.value)
    assert isinstance(e.value, RessenetError) and "secret" not in text and len(text.splitlines()) == 1
    assert "File name too long" not in text and not list(tmp_path.rglob("*.part*"))


def test_atomic_writes_leave_the_permissions_a_plain_write_would(tmp_path):
    # A temporary file is made 0o600; renamed as it is, every summary, card and weights file would be private to
    # its writer, unreadable to a group that shares a results folder.
    from ressenet.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o002)
        atomic_write_text(tmp_path / "group.json", "{}")
        assert (tmp_path / "group.json").stat().st_mode & 0o777 == 0o664
        kept = tmp_path / "kept.json"
        kept.write_text("x")
        kept.chmod(0o640)
        atomic_write_text(kept, "{}")  # a file that exists keeps its own
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "{}"
    finally:
        os.umask(old)
