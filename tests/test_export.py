"""Trained weights as files: `ressenet export` (safetensors + model card), load_pretrained / create_model(pretrained=)
by path or URL with a sha256 check, `ressenet eval --weights`; on a tiny synthetic run trained here on the CPU."""
from __future__ import annotations

import json
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch

import ressenet
from ressenet.cli import main
from ressenet.data import eval_batches
from ressenet.engine.checkpoint import load_checkpoint
from ressenet.engine.evaluation import evaluate
from ressenet.engine.run import Run
from ressenet.engine.setup import load_data
from ressenet.engine.train import train
from ressenet.errors import RessenetError
from ressenet.experiments.export import export_run
from ressenet.weights import read_header, sha256_file
from tiny import tiny_config


def _config(out: Path, **over):
    return tiny_config(out, **{"run.compile": None, **over})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(_config(out))
    return out


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory) -> Path:
    """A run stopped by SIGINT after iteration 4 of 8, as Ctrl-C leaves it (last.pt at 4, no summary.json)."""
    out = tmp_path_factory.mktemp("runs") / "stopped"
    step = Run.step

    def step_then_interrupt(self: Run) -> None:
        step(self)
        if self.state.it == 4:
            signal.raise_signal(signal.SIGINT)

    mp = pytest.MonkeyPatch()
    mp.setattr(Run, "step", step_then_interrupt)
    try:
        with pytest.raises(SystemExit):
            train(_config(out))
    finally:
        mp.undo()
    assert not (out / "summary.json").exists() and load_checkpoint(out / "last.pt")["iter"] == 4
    return out


@pytest.fixture()
def exported(finished_run, tmp_path) -> dict:
    return export_run(finished_run, tmp_path / "tiny.safetensors")


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_export_writes_weights_with_header_and_card(finished_run, exported):
    summary, path = _summary(finished_run), Path(exported["weights"])
    assert path.is_file() and exported["sha256"] == sha256_file(path)
    h = read_header(path)
    assert (h["model"], h["family"], h["depth"], h["num_classes"]) == ("resnet20", "resnet", 20, 10)
    assert h["options"] == {"shortcut": "B", "se_reduction": 16, "layout": "basic"}
    assert h["mean"] == [0.4914, 0.4822, 0.4465] and h["std"] == [0.2023, 0.1994, 0.2010]
    assert h["dataset"] == "synthetic" and h["data"]["fingerprint"] == summary["data"]["fingerprint"]
    assert h["data"]["lossless"] is True and h["data_label"] == "synthetic data"
    assert h["finished"] is True and h["iters"] == h["planned_iters"] == 8
    assert (h["test_top1"], h["test_top5"]) == (summary["test_top1"], summary["test_top5"])
    meta = (finished_run / "config.yaml").read_text()
    assert h["trained_with"]["ressenet"] == ressenet.__version__ and str(h["trained_with"]["git_commit"]) in meta
    assert h["config"] == summary["config"]
    # The weights are last.pt's, bit for bit.
    from safetensors.torch import load_file

    ckpt = load_checkpoint(finished_run / "last.pt")["model"]
    tensors = load_file(str(path))
    assert set(tensors) == set(ckpt) and all(torch.equal(tensors[k], ckpt[k]) for k in ckpt)
    card = Path(exported["card"]).read_text()
    assert Path(exported["card"]) == path.with_suffix(".md")
    assert exported["sha256"] in card and f"{summary['test_top1']:.2f}%" in card and "synthetic data" in card
    assert "ressenet.load_pretrained('tiny.safetensors')" in card and "ressenet eval --weights tiny.safetensors" in card
    assert "Unfinished" not in card


def test_create_model_pretrained_reproduces_the_final_test_top1(finished_run, exported):
    summary = _summary(finished_run)
    model = ressenet.create_model("resnet20", pretrained=exported["weights"]).eval()
    cfg = model.pretrained_cfg
    assert (cfg["file"], cfg["sha256"], cfg["dataset"], cfg["num_classes"]) == (
        exported["weights"], exported["sha256"], "synthetic", 10)
    data = load_data(_config(finished_run))
    batches = eval_batches(data.test, 100, mean=cfg["mean"], std=cfg["std"], device="cpu")
    assert evaluate(model, batches).top1 == summary["test_top1"]
    assert ressenet.load_pretrained(exported["weights"]).pretrained_cfg == model.pretrained_cfg


def test_eval_weights_reproduces_the_final_test_top1(finished_run, exported, capsys):
    summary = _summary(finished_run)
    assert main(["eval", "--weights", exported["weights"], "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["top1"], res["top5"], res["images"]) == (summary["test_top1"], summary["test_top5"], 128)
    assert res["model"] == "resnet20" and res["sha256"] == exported["sha256"] and res["iter"] == 8


def test_export_cli_prints_where_and_the_checksum(finished_run, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sha256_file(out) in text and str(out.with_suffix(".md")) in text and "test top-1" in text


def test_export_into_a_folder_names_the_file_by_its_hash_and_prints_a_manifest_row(finished_run, tmp_path,
                                                                                    capsys):
    """The weights/ zoo's naming: one run exported twice is one file (safetensors' metadata order is fixed), and
    ``--tag`` prints a row the manifest reader accepts."""
    import json

    from ressenet.pretrained import _row

    folder = tmp_path / "weights"
    folder.mkdir()
    first = export_run(finished_run, folder)
    assert Path(first["weights"]).name == f"resnet20-{first['sha256'][:8]}.safetensors"
    assert main(["export", str(finished_run), "--out", str(folder), "--overwrite", "--tag", "tiny"]) == 0
    assert {p.name for p in folder.iterdir()} == {Path(first["weights"]).name, Path(first["card"]).name}
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["sha256"] == first["sha256"]
    with pytest.raises(RessenetError, match="meta.trained_with.cpu"):  # what only the publisher knows
        _row(0, row, folder)
    row["meta"]["trained_with"]["cpu"] = row["meta"]["measured_with"]["cpu"] = "a CPU"
    row["meta"]["measured_with"]["torch"] = "2.x"
    assert _row(0, row, folder).tag == "tiny"
    assert main(["export", str(finished_run), "--tag", "tiny"]) == 2


def test_export_defaults_into_the_run_directory(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    res = export_run(run)
    assert res["weights"] == str(run / "copy.safetensors") and (run / "copy.md").is_file()


def test_export_refuses_to_overwrite_unless_asked(exported, finished_run, capsys):
    out = exported["weights"]
    assert main(["export", str(finished_run), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and err.count("\n") == 1
    before = Path(out).stat().st_mtime_ns
    assert main(["export", str(finished_run), "--out", out, "--overwrite"]) == 0
    assert Path(out).stat().st_mtime_ns >= before
    assert main(["export", str(finished_run), "--out", str(Path(out).with_suffix(".pt"))]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_unfinished_run_is_refused_unless_allowed(unfinished_run, tmp_path, capsys):
    out = tmp_path / "stopped.safetensors"
    assert main(["export", str(unfinished_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "did not finish" in err and "iteration 4 of 8" in err and "--allow-unfinished" in err
    assert err.count("\n") == 1 and not out.exists()
    res = export_run(unfinished_run, out, allow_unfinished=True)
    h = res["header"]
    assert h["finished"] is False and h["iters"] == 4 and h["planned_iters"] == 8
    rec = [json.loads(ln) for ln in (unfinished_run / "metrics.jsonl").read_text().splitlines()]
    at4 = [r for r in rec if r["kind"] == "eval" and r["iter"] == 4][-1]
    assert h["test_top1"] == at4["test_top1"]
    assert "**Unfinished run**" in Path(res["card"]).read_text()
    # Reproduced from the file too, like a finished run's.
    assert main(["eval", "--weights", str(out), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == at4["test_top1"]


def test_a_header_for_another_model_options_or_classes_is_refused_before_copying(exported, monkeypatch):
    import safetensors.torch

    def no_copy(*a, **k):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(safetensors.torch, "load_file", no_copy)
    f = exported["weights"]
    cases = [(("res_se_net20",), {}, "model 'resnet20', not 'res_se_net20'"),
             (("resnet20",), {"num_classes": 100}, "num_classes=10, not 100"),
             (("resnet20",), {"shortcut": "a"}, "shortcut='B', not 'A'"),
             (("resnet20",), {"se_reduction": 8}, "se_reduction=16, not 8"),
             (("resnet20",), {"layout": "released"}, "layout='basic', not 'released'")]
    for args, kw, text in cases:
        with pytest.raises(RessenetError, match="refused") as e:
            ressenet.create_model(*args, pretrained=f, **kw)
        assert text in str(e.value) and "\n" not in str(e.value)
    assert "reset_classifier" in str(pytest.raises(RessenetError, ressenet.create_model, "resnet20",
                                                   pretrained=f, num_classes=100).value)
    with pytest.raises(RessenetError, match="publishes no weights for resnet110; models with weights: "):
        ressenet.create_model("resnet110", pretrained=True)


class _Bomb:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_files_are_refused_and_nothing_is_unpickled(tmp_path, finished_run, capsys):
    marker = tmp_path / "unpickled"
    crafted = tmp_path / "evil.safetensors"
    crafted.write_bytes(pickle.dumps({"model": _Bomb(marker)}))
    torch_file = tmp_path / "renamed.safetensors"
    shutil.copy(finished_run / "last.pt", torch_file)  # a zip of pickles, as torch.save writes
    for path in (crafted, torch_file):
        with pytest.raises(RessenetError, match="is not a safetensors weights file"):
            ressenet.load_pretrained(path)
        assert main(["eval", "--weights", str(path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a safetensors weights file" in err
    with pytest.raises(RessenetError, match="with --checkpoint"):
        ressenet.load_pretrained(finished_run / "last.pt")
    assert not marker.exists()
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"fc.weight": torch.zeros(10, 64)}, str(plain))
    with pytest.raises(RessenetError, match="without a ressenet header"):
        ressenet.load_pretrained(plain)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ressenet.load_pretrained(tmp_path / "missing.safetensors")


def test_url_download_is_checked_and_cached(exported, tmp_path, monkeypatch):
    url = Path(exported["weights"]).as_uri()
    digest = exported["sha256"]
    cache = tmp_path / "cache"
    with pytest.raises(RessenetError, match="needs the file's sha256"):
        ressenet.load_pretrained(url, cache_dir=cache)
    bad = "0" * 64
    with pytest.raises(RessenetError, match="not cached") as e:
        ressenet.load_pretrained(url, sha256=bad, cache_dir=cache)
    assert digest in str(e.value)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing kept, not even the temporary file
    with pytest.raises(RessenetError, match="64 hexadecimal"):
        ressenet.load_pretrained(url, sha256="abc", cache_dir=cache)
    model = ressenet.load_pretrained(f"{url}#sha256={digest}", cache_dir=cache)
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert len(cached) == 1 and sha256_file(cached[0]) == digest and model.pretrained_cfg["file"] == str(cached[0])

    def no_network(*a, **k):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    again = ressenet.create_model("resnet20", pretrained=url, sha256=digest, cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    cached[0].write_bytes(cached[0].read_bytes()[:-1] + b"\0")  # the cached copy is damaged later
    with pytest.raises(RessenetError, match="was damaged; delete it"):
        ressenet.load_pretrained(url, sha256=digest, cache_dir=cache)


def test_a_local_file_with_another_sha256_is_refused(exported):
    with pytest.raises(RessenetError, match="not the .* asked for"):
        ressenet.load_pretrained(exported["weights"], sha256="f" * 64)
    assert ressenet.load_pretrained(exported["weights"], sha256=exported["sha256"]).num_classes == 10


def test_export_refuses_a_directory_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no last.pt" in err and err.count("\n") == 1
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_weights_on_another_dataset_normalises_as_trained(exported, tmp_path, capsys):
    from cifar_fakes import write_image_folder

    from ressenet.data import load_datasets

    classes = tuple(f"c{i}" for i in range(10))
    write_image_folder(tmp_path / "folder", classes=classes, train_per_class=4, test_per_class=3)
    args = ["eval", "--weights", exported["weights"], "--device", "cpu", "--dataset", "imagefolder",
            "--data-root", str(tmp_path / "folder"), "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) == 2 and "other classes" in capsys.readouterr().err  # as eval --checkpoint refuses
    args.append("--allow-other-classes")
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "imagefolder" and res["images"] == 30  # all test images: the run's limits not applied
    model = ressenet.load_pretrained(exported["weights"]).eval()
    test = load_datasets("imagefolder", tmp_path / "folder", cache_dir=tmp_path / "cache")["test"]
    cfg = model.pretrained_cfg
    assert res["top1"] == evaluate(model, eval_batches(test, 100, mean=cfg["mean"], std=cfg["std"],
                                                       device="cpu")).top1
    write_image_folder(tmp_path / "three", train_per_class=12, test_per_class=2)
    args[args.index(str(tmp_path / "folder"))] = str(tmp_path / "three")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "predicts 10 classes" in err and "has 3" in err and err.count("\n") == 1


def test_a_run_normalised_with_its_own_statistics_exports_them(tmp_path, capsys):
    import yaml

    out = tmp_path / "ds"
    summary = train(_config(out, **{"data.normalization": "dataset", "optim.iters": 4, "optim.milestones": [2]}))
    meta = yaml.safe_load((out / "config.yaml").read_text())["meta"]
    res = export_run(out, tmp_path / "ds.safetensors")
    h = res["header"]
    assert h["normalization"] == "dataset" and h["mean"] == meta["mean"] and h["std"] == meta["std"]
    assert h["mean"] != [0.4914, 0.4822, 0.4465]  # the synthetic training set's own statistics
    assert main(["eval", "--weights", res["weights"], "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == summary["test_top1"]
    # A run that did not record them (trained before runs did) cannot be exported faithfully: refused.
    tree = yaml.safe_load((out / "config.yaml").read_text())
    del tree["meta"]["mean"], tree["meta"]["std"]
    (out / "config.yaml").write_text(yaml.safe_dump(tree))
    assert main(["export", str(out), "--out", str(tmp_path / "old.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "does not record them" in err and err.count("\n") == 1 and not (tmp_path / "old.safetensors").exists()


@pytest.mark.parametrize("field,value", [("model", 7), ("options", ["B"]), ("num_classes", "10"), ("mean", [0.5]),
                                         ("std", [0.2, 0.2, 0.0]), ("config", "x")])
def test_a_malformed_header_is_refused_in_one_line(exported, tmp_path, field, value):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(exported["weights"], framework="pt") as f:
        meta = f.metadata()
    header = json.loads(meta["ressenet"])
    header[field] = value
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(exported["weights"]), str(edited), metadata={**meta, "ressenet": json.dumps(header)})
    with pytest.raises(RessenetError, match=f"malformed {field}") as e:
        ressenet.load_pretrained(edited)
    assert "\n" not in str(e.value)
