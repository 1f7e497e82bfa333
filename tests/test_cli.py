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

    write_cifar(tmp_path, "cifar100", "binary", train_size=40, test_size=20)
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path), "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text)
    assert "cifar100-binary" in text and "40" in text and "20" in text and info
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 0
    assert "cifar100-binary" in capsys.readouterr().out


def test_data_info_missing_root_is_one_line(tmp_path, capsys):
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--download" in err[0]


def test_python_dash_m_and_version():
    res = subprocess.run([sys.executable, "-m", "ressenet", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("ressenet ")
