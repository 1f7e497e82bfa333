"""A checkpoint is data, not instructions: resume refuses foreign or damaged ones with one line; eval never
downloads or writes a cache because a checkpoint says so."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from ressenet.cli import main as cli_main
from ressenet.engine.checkpoint import load_checkpoint, save_checkpoint
from ressenet.engine.config import load_config
from ressenet.engine.train import evaluate_checkpoint, train

BASE = {"model.name": "resnet20", "data.dataset": "synthetic", "data.train_limit": 128, "data.test_limit": 64,
        "optim.batch_size": 16, "optim.iters": 8, "optim.milestones": [4], "run.eval_every": 8, "run.log_every": 4,
        "run.ckpt_every": 4, "run.progress": "none", "run.device": "cpu", "run.compile": False}


def _cfg(out, **over):
    return load_config(None, {**BASE, "run.out": str(out), **over})


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
    from ressenet.experiments.grid import cell_state, expand_grid, load_grid

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
