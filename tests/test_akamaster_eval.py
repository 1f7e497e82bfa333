"""benchmarks/akamaster_eval.py: akamaster's state dicts map in registration order onto option-A ResNets."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch

from ressenet.models import create_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "akamaster_eval.py"


def _script():
    spec = importlib.util.spec_from_file_location("akamaster_eval", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_module_prefixed_state_dict_loads_in_registration_order(tmp_path: Path) -> None:
    aka = _script()
    torch.manual_seed(0)
    src = create_model("resnet20", shortcut="A").eval()
    theirs = {f"module.other_name_{i}": v for i, (k, v) in enumerate(src.state_dict().items())
              if not k.endswith("num_batches_tracked")}
    buf = io.BytesIO()
    torch.save({"state_dict": theirs, "best_prec1": 91.73}, buf)
    model = aka.load_model(20, buf.getvalue())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert 0.0 <= aka.top1(model, images, torch.tensor([0, 1, 2, 3]), batch=3) <= 100.0
    (tmp_path / "resnet20-12fca82f.th").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:x\n")
    with pytest.raises(SystemExit, match="Git LFS pointer"):
        aka.weight_files(None, tmp_path)
