"""Test top-1 of akamaster's published CIFAR-10 ResNets on the CIFAR-10 JPEG copy's test set.

akamaster/pytorch_resnet_cifar10 publishes ResNet-20/32/44/56 weights trained on the real CIFAR-10 (its README:
91.73 / 92.63 / 93.10 / 93.39% test top-1). Evaluated here, single-threaded, on the 10,000 test images of the JPEG
copy, they measure how much the copy's compression costs a model trained on the original pixels: the part of the gap
between this project's numbers and the paper's that the data alone explains.

Each ``pretrained_models/resnetN-*.th`` holds ``{"state_dict": ...}`` with a ``module.`` prefix (DataParallel); its
tensors map one to one, in registration order, onto ``create_model("resnetN", shortcut="A")`` (option-A shortcuts,
as He et al.'s CIFAR nets). The weights are read either from a folder of ``.th`` files or straight from a git
clone of the repository (``git show``), so nothing of akamaster's is copied into this project. Inputs are
normalised with ImageNet's mean and std, as akamaster's trainer does.

    git clone https://github.com/akamaster/pytorch_resnet_cifar10 /tmp/aka
    python3 benchmarks/akamaster_eval.py --git-dir /tmp/aka/.git --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --json benchmarks/results/akamaster_eval.json
"""
from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

PUBLISHED = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39}  # akamaster's README, test top-1 on CIFAR-10 (%)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILE = re.compile(r"pretrained_models/resnet(\d+)-[0-9a-f]+\.th$")


def weight_files(git_dir: Path | None, folder: Path | None) -> dict[int, bytes]:
    """The ``.th`` files by depth: from a git directory's HEAD (``git show``) or a folder."""
    found: dict[int, bytes] = {}
    if git_dir is not None:
        names = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "HEAD"],
                               check=True, capture_output=True, text=True).stdout.split()
        for name in names:
            if (m := FILE.search(name)) and int(m.group(1)) in PUBLISHED:
                data = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"],
                                      check=True, capture_output=True).stdout
                found[int(m.group(1))] = data
    for path in sorted(folder.glob("resnet*.th")) if folder else []:
        if (m := FILE.search(f"pretrained_models/{path.name}")) and int(m.group(1)) in PUBLISHED:
            found[int(m.group(1))] = path.read_bytes()
    for depth, data in found.items():
        if data.startswith(b"version https://git-lfs"):
            raise SystemExit(f"resnet{depth}: the file is a Git LFS pointer, not the weights; fetch the LFS object")
    return dict(sorted(found.items()))


def load_model(depth: int, data: bytes) -> torch.nn.Module:
    """``resnet{depth}`` with option-A shortcuts holding akamaster's tensors, matched in registration order."""
    from ressenet.models import create_model

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["state_dict"]
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    model = create_model(f"resnet{depth}", shortcut="A")
    ours = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise SystemExit(f"resnet{depth}: {len(theirs)} tensors in the file, {len(ours)} in the model")
    new = {}
    for (kt, vt), (ko, vo) in zip(theirs, ours):
        if vt.shape != vo.shape:
            raise SystemExit(f"resnet{depth}: {kt} {tuple(vt.shape)} does not fit {ko} {tuple(vo.shape)}")
        new[ko] = vt
    model.load_state_dict(new, strict=False)
    return model.eval()


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Test top-1 (%) with ImageNet normalisation, float32."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    correct = 0
    for i in range(0, len(labels), batch):
        x = (images[i:i + batch].float() / 255 - mean) / std
        correct += int((model(x).argmax(1) == labels[i:i + batch]).sum())
    return 100.0 * correct / len(labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--git-dir", type=Path, default=None, help="git directory of a clone of akamaster's repository")
    p.add_argument("--weights", type=Path, default=None, help="or: a folder holding its resnetN-*.th files")
    p.add_argument("--data-root", type=Path, default=None, help="the CIFAR-10 JPEG copy (archive or folder)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: ressenet's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.git_dir is None and args.weights is None:
        p.error("give --git-dir or --weights")
    torch.set_num_threads(args.threads)
    from ressenet.data.datasets import load_split

    info = common.header("akamaster's CIFAR-10 ResNets on the CIFAR-10 JPEG copy's test set", torch.device("cpu"))
    t0 = time.perf_counter()
    test = load_split("imagefolder", "test", args.data_root or common.default_archive(), cache_dir=args.cache_dir)
    expected = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if list(test.classes) != expected:
        raise SystemExit(f"class order {test.classes} is not CIFAR-10's {expected}")
    rows = []
    for depth, data in weight_files(args.git_dir, args.weights).items():
        acc = top1(load_model(depth, data), test.images, test.labels)
        rows.append({"model": f"resnet{depth}", "test_images": len(test.labels), "jpeg_test_top1": acc,
                     "published_cifar10_top1": PUBLISHED[depth], "difference": acc - PUBLISHED[depth]})
        print(f"resnet{depth}: {acc:.2f}% on the JPEG copy ({len(test.labels):,} images); published "
              f"{PUBLISHED[depth]:.2f}% on CIFAR-10; difference {acc - PUBLISHED[depth]:+.2f}")
    return common.finish(info, args.json, {**info, "results": rows}, t0)


if __name__ == "__main__":
    raise SystemExit(main())
