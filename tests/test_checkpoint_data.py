"""A checkpoint is data, not instructions: resume refuses foreign or damaged ones with one line; eval never
downloads or writes a cache because a checkpoint says so."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from ressenet.cli import main as cli_main
from ressenet.engine.checkpoint import load_checkpoint, save_checkpoint
from ressenet.engine.evaluation import evaluate_checkpoint
from ressenet.engine.train import train
from tiny import tiny_config

BASE = {"data.train_limit": 128, "data.test_limit": 64, "optim.batch_size": 16, "optim.milestones": [4],
        "run.eval_every": 8, "run.log_every": 4}


def _cfg(out, **over):
    return tiny_config(out, **{**BASE, **over})


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    out = tmp_path_factory.mktemp("donor") / "run"
    train(_cfg(out, **{"run.seed": 3, "optim.lr": 0.05, "optim.iters": 4}))
    return out / "last.pt"


def _resume_error(tmp_path, ckpt_state=None, src=None, **over) -> str:
    out = tmp_path / "victim"
    out.mkdir()
    # The victim run had started (its config.yaml is there); then a checkpoint was copied or damaged in place.
    (out / "config.yaml").write_text(yaml.safe_dump(_cfg(out, **over).to_dict()))
    if src is not None:
        shutil.copy(src, out / "last.pt")
    else:
        save_checkpoint(out / "last.pt", ckpt_state)
    with pytest.raises(Exception) as e:
        train(_cfg(out, **over))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_a_checkpoint_from_another_run_is_refused(tmp_path, donor):
    msg = _resume_error(tmp_path, src=donor, **{"run.seed": 12, "optim.lr": 0.1})
    assert "belongs to another run" in msg and "optim.lr" in msg and "run.seed" in msg


@pytest.mark.parametrize("damage,expect", [
    (lambda s: s.pop("optimizer"), "lacks optimizer"),
    (lambda s: s.__setitem__("config", "model: resnet20"), "holds a str where its config belongs"),
    (lambda s: s.__setitem__("iter", 10_000), "outside this run's 0..4"),
    (lambda s: s.__setitem__("model", {"w": torch.zeros(1)}), "does not fit this run"),
])
def test_damaged_checkpoints_give_one_line(tmp_path, donor, damage, expect):
    state = load_checkpoint(donor)
    damage(state)
    assert expect in _resume_error(tmp_path, state, **{"run.seed": 3, "optim.lr": 0.05, "optim.iters": 4})


def test_eval_never_downloads_or_uses_a_cache_the_checkpoint_names(tmp_path, donor, capsys):
    state = load_checkpoint(donor)
    state["config"]["data"].update(download=True, cache_dir=str(tmp_path / "planted-cache"),
                                   data_root=str(tmp_path / "not-here"))
    path = tmp_path / "x.pt"
    save_checkpoint(path, state)
    res = evaluate_checkpoint(path, device="cpu")
    assert res["data_root"] is None and res["images"] == 64
    assert not (tmp_path / "planted-cache").exists() and not (tmp_path / "not-here").exists()
    other = tmp_path / "other.pt"
    state["model"] = {"w": torch.zeros(1)}
    save_checkpoint(other, state)
    assert cli_main(["eval", "--checkpoint", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit resnet20" in err and len(err.strip().splitlines()) == 1


def test_data_identity_is_part_of_the_run(tmp_path):
    """Resume refuses a checkpoint trained on other data; the grid does not count such a run as done."""
    from ressenet.experiments.cells import cell_state
    from ressenet.experiments.gridspec import expand_grid, load_grid

    from cifar_fakes import write_image_folder

    write_image_folder(tmp_path / "a", train_per_class=8, seed=0)
    write_image_folder(tmp_path / "b", train_per_class=8, seed=1)  # same names and layout, other pixels
    folder = {"data.dataset": "imagefolder", "data.cache_dir": str(tmp_path / "cache"), "data.train_limit": 0,
              "data.test_limit": 0, "optim.iters": 4, "optim.batch_size": 8}
    out = tmp_path / "run"
    train(_cfg(out, **folder, **{"data.data_root": str(tmp_path / "a")}))
    (out / "summary.json").unlink()  # unfinished again, so that train resumes
    with pytest.raises(Exception, match="trained on other data"):  # data_root alone is result-neutral
        train(_cfg(out, **folder, **{"data.data_root": str(tmp_path / "b")}))
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nseeds: [1]\nmodels: [resnet20]\ndatasets: [synthetic]\nconfig:\n"
                    "  optim: {iters: 4, batch_size: 16, milestones: [2]}\n  data: {train_limit: 128, test_limit: 64}\n"
                    "  run: {device: cpu, compile: false, eval_every: 4}\n")
    cell = expand_grid(load_grid(grid), tmp_path / "runs")[0]
    train(cell.config)
    assert cell_state(cell, {}).state == "done"
    summary = cell.out / "summary.json"
    import json
    s = json.loads(summary.read_text())
    s["data"]["fingerprint"] = "0123456789abcdef"  # as if trained on other pixels
    summary.write_text(json.dumps(s))
    st = cell_state(cell, {})
    assert st.state == "conflict" and "trained on other data" in st.detail


def _folder_run(tmp_path):
    """A finished run trained on the image folder ``a``, and ``b``: a copy of it with two class folders swapped."""
    from cifar_fakes import write_image_folder

    write_image_folder(tmp_path / "a", train_per_class=8, seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for split in ("train", "test"):
        d = tmp_path / "b" / split
        (d / "cat").rename(d / "tmp")
        (d / "dog").rename(d / "cat")
        (d / "tmp").rename(d / "dog")
    folder = {"data.dataset": "imagefolder", "data.cache_dir": str(tmp_path / "cache"), "data.train_limit": 0,
              "data.test_limit": 0, "optim.iters": 4, "optim.batch_size": 8}
    out = tmp_path / "run"
    train(_cfg(out, **folder, **{"data.data_root": str(tmp_path / "a")}))
    return out, folder


def test_a_finished_run_on_other_data_is_not_this_commands_result(tmp_path, capsys):
    out, folder = _folder_run(tmp_path)
    with pytest.raises(Exception, match=r"holds a run finished on other data .*point --data-root at the data") as e:
        train(_cfg(out, **folder, **{"data.data_root": str(tmp_path / "b")}))
    assert len(str(e.value).splitlines()) == 1
    assert train(_cfg(out, **folder, **{"data.data_root": str(tmp_path / "a")}))["iters"] == 4  # its own data: done


@pytest.mark.parametrize("content", [[], {}, {"test_top1": "x"}])
def test_a_summary_without_a_result_is_one_line_on_resume(tmp_path, capsys, content):
    import json

    out = tmp_path / "run"
    train(_cfg(out))
    (out / "summary.json").write_text(json.dumps(content))
    # One line naming the file, what is wrong with it and the fix (engine/runfiles.py, the summary's one reader).
    with pytest.raises(Exception, match=r"summary.json(:| holds) .*delete it and run the run again to finish it") as e:
        train(_cfg(out))
    assert len(str(e.value).splitlines()) == 1


def test_eval_says_when_the_data_is_not_the_training_data(tmp_path, capsys):
    out, _ = _folder_run(tmp_path)
    ckpt = str(out / "last.pt")
    common = ["eval", "--checkpoint", ckpt, "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert cli_main([*common, "--data-root", str(tmp_path / "a")]) == 0
    assert "not the data" not in capsys.readouterr().err
    with pytest.warns(UserWarning) as notes:  # the CLI prints a note as one line (ressenet.cli.main)
        assert cli_main([*common, "--data-root", str(tmp_path / "b")]) == 0  # the same classes, other content
    assert len(notes) == 1 and "is not the data" in str(notes[0].message) and "trained on" in str(notes[0].message)
    for split in ("train", "test"):
        (tmp_path / "b" / split / "dog").rename(tmp_path / "b" / split / "wolf")
    assert cli_main([*common, "--data-root", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "other classes ('wolf'" in err and "--allow-other-classes" in err
    with pytest.warns(UserWarning, match="is not the data"):
        assert cli_main([*common, "--data-root", str(tmp_path / "b"), "--allow-other-classes", "--json"]) == 0
    assert '"same_data": false' in capsys.readouterr().out


def test_eval_advice_fits_eval(tmp_path, donor, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(donor.read_bytes()[:300])
    for path, expect in ((bad, r"corrupt or truncated \(\w+Error: "), (tmp_path, "is a directory; pass a checkpoint "
                                                                                   "file in it")):
        assert cli_main(["eval", "--checkpoint", str(path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--overwrite" not in err, err
        assert __import__("re").search(expect, err), err
    state = load_checkpoint(donor)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("fc")}
    other = tmp_path / "other.pt"
    save_checkpoint(other, state)
    assert cli_main(["eval", "--checkpoint", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Missing key(s)" in err and "--overwrite" not in err, err
    state = load_checkpoint(donor)
    state["config"]["model"]["num_classes"] = 100
    save_checkpoint(other, state)
    assert cli_main(["eval", "--checkpoint", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trained for 100 classes" in err and "--num-classes" not in err, err
    assert cli_main(["eval", "--checkpoint", str(donor), "--device", "cpu", "--batch-size", "0"]) == 2
    assert "--batch-size 0: expected a positive" in capsys.readouterr().err
