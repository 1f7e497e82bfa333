"""The command-line front end: `ressenet models`, `data info`, errors as one line, `python -m ressenet`."""
from __future__ import annotations

import json
import subprocess
import sys

from ressenet.cli import main
from ressenet.models import count_params, create_model


def test_models_table_and_json(capsys):
    assert main(["models", "res_se_net44"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["name", "params", "MMACs", "SE", "bridges"]
    row = next(ln for ln in out if ln.startswith("res_se_net44 "))
    assert "662,080" in row and row.split()[3:5] == ["2", "2"]
    assert main(["models", "resnet*_nobridge", "--json", "--num-classes", "100"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"resnet{d}_nobridge" for d in (20, 32, 44, 56, 110, 1202)]
    assert rows[0]["params"] == count_params(create_model("resnet20_nobridge", num_classes=100))
    assert all(r["bridges"] == 0 and r["se_blocks"] == 0 for r in rows)
    assert rows[0]["macs"] > 40e6


def test_models_unknown_filter(capsys):
    assert main(["models", "densenet"]) == 2
    assert "no model matches 'densenet'" in capsys.readouterr().err


def test_data_info_on_official_layout_json(tmp_path, capsys):
    from cifar_fakes import write_cifar

    import numpy as np

    from ressenet.data.constants import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES

    fake = write_cifar(tmp_path, "cifar100", "binary", train_size=40, test_size=20)
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "cifar100" and set(info["splits"]) == {"train", "test"}
    written = {"train": (fake.train_images, fake.train_labels, fake.train_coarse),
               "test": (fake.test_images, fake.test_labels, fake.test_coarse)}
    for split, (images, labels, coarse) in written.items():
        s = info["splits"][split]
        assert s["format"] == "cifar100-binary" and s["path"] == str(fake.folder)
        assert s["count"] == len(labels) == {"train": 40, "test": 20}[split]
        assert s["num_classes"] == 100 and s["classes"] == list(CIFAR100_CLASSES)
        # Per-class counts are those of the labels written, not just of the right length.
        assert s["class_counts"] == np.bincount(labels, minlength=100).tolist()
        assert s["num_coarse_classes"] == 20 and s["coarse_classes"] == list(CIFAR100_COARSE_CLASSES)
        assert s["coarse_class_counts"] == np.bincount(coarse, minlength=20).tolist()
        # Per-channel mean and population std of the pixels written, on the 0..1 scale.
        pix = images.astype(np.float64) / 255.0
        np.testing.assert_allclose(s["mean"], pix.mean(axis=(0, 2, 3)), atol=1e-7)
        np.testing.assert_allclose(s["std"], pix.std(axis=(0, 2, 3)), atol=1e-7)

    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dataset: cifar100   root: {tmp_path}"
    for split in ("train", "test"):
        s = info["splits"][split]
        row = next(ln for ln in lines if ln.startswith(f"{split} "))
        mean, std = (" ".join(f"{v:.4f}" for v in s[k]) for k in ("mean", "std"))
        assert row.split() == [split, "cifar100-binary", str(s["count"]), "100", *mean.split(), *std.split()]
    # The per-class table: one row per class with its train and test counts, then one per superclass.
    for table, names, key in (("class", CIFAR100_CLASSES, "class_counts"),
                              ("superclass", CIFAR100_COARSE_CLASSES, "coarse_class_counts")):
        start = next(i for i, ln in enumerate(lines) if ln.split() == [table, "train", "test"])
        rows = [ln.split() for ln in lines[start + 1:start + 1 + len(names)]]
        assert rows == [[name, str(info["splits"]["train"][key][i]), str(info["splits"]["test"][key][i])]
                        for i, name in enumerate(names)]


def test_data_info_missing_root_is_one_line(tmp_path, capsys):
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--download" in err[0]


def test_python_dash_m_and_version():
    res = subprocess.run([sys.executable, "-m", "ressenet", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("ressenet ")
