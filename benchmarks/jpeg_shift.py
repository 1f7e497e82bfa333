"""Published weights on exact pixels against JPEG ones: top-1 on the first 4,000 official CIFAR-10 training images
(``cifar-10-lossless-subset``, exact) and on the same 4,000 images from the JPEG copy the weights were trained on.

A training-set slice: the models saw these images (as JPEGs) while training, so both figures sit above test
accuracy; the difference between them is what JPEG damage alone moves on the same images, the shift a user of the
official CIFAR-10 may expect. Evaluated as ``ressenet eval --weights`` evaluates (the weights' mean and std, their
training precision, channels-last, batches of 100). Prints each model's figures and the manifest's ``jpeg_shift``
entry for it.

    python3 benchmarks/jpeg_shift.py --data ../shared/data --json benchmarks/results/jpeg_shift.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

import ressenet  # noqa: E402
from ressenet.data import ImageDataset, eval_batches, load_datasets, read_binary_batch  # noqa: E402
from ressenet.engine.evaluation import evaluate  # noqa: E402
from ressenet.engine.setup import autocast_context  # noqa: E402
from ressenet.pretrained import list_pretrained  # noqa: E402
from ressenet.weights import read_header  # noqa: E402

SLICE = "cifar-10-lossless-subset/data_batch_1_first4000.bin"


def paired_slices(data: Path, cache_dir: str | None) -> tuple[ImageDataset, ImageDataset, float]:
    """(exact, JPEG) datasets of the same 4,000 training images in the same order, and their RMS pixel difference.
    Within a class the JPEG copy's files follow the official order, so the slice's k-th image of a class is the
    copy's k-th training image of that class."""
    exact, labels, _ = read_binary_batch(data / SLICE)
    train = load_datasets("imagefolder", data / "cifar10-jpeg.tar.gz", cache_dir=cache_dir)["train"]
    jpeg = np.empty_like(exact)
    for k in range(len(train.classes)):
        where = np.flatnonzero(labels == k)
        jpeg[where] = train.images[train.labels == k][:len(where)].numpy()
    rms = float(np.sqrt(((jpeg.astype(np.float64) - exact.astype(np.float64)) ** 2).mean()))
    if rms > 15:
        raise SystemExit(f"the JPEG images do not pair with the exact ones (RMS {rms:.1f} grey levels)")
    y = torch.from_numpy(labels.astype(np.int64))
    return (ImageDataset(torch.from_numpy(exact), y, list(train.classes), lossless=True),
            ImageDataset(torch.from_numpy(jpeg), y, list(train.classes), lossless=False), rms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the two data stand-ins")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: ressenet's)")
    p.add_argument("--models", default="*", help="shell pattern of published models (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = common.header("published weights: exact against JPEG pixels, 4,000 training images", device)
    t0 = time.perf_counter()
    exact, jpeg, rms = paired_slices(args.data, args.cache_dir)
    print(f"{len(exact.labels)} images, JPEG against exact: {rms:.2f} grey levels RMS")
    rows = []
    for w in list_pretrained(args.models):
        model = ressenet.create_model(w.model, pretrained=w.tag).eval().to(memory_format=torch.channels_last)
        amp = autocast_context((read_header(model.pretrained_cfg["file"])["trained_with"] or {}).get("precision")
                               or "fp32", device)
        top1 = {}
        for name, ds in (("exact", exact), ("jpeg", jpeg)):
            batches = eval_batches(ds, 100, mean=w.meta["mean"], std=w.meta["std"], channels_last=True)
            top1[name] = round(evaluate(model, batches, amp=amp).top1, 2)
        shift = {"images": len(exact.labels), "exact_top1": top1["exact"], "jpeg_top1": top1["jpeg"]}
        rows.append({"model": w.model, "tag": w.tag, "file": w.file, **shift})
        print(f"{w.model:32} exact {top1['exact']:6.2f}  JPEG {top1['jpeg']:6.2f}  exact - JPEG "
              f"{top1['exact'] - top1['jpeg']:+.2f}   \"jpeg_shift\": {json.dumps(shift)}")
    return common.finish(info, args.json, {**info, "rms_grey_levels": rms, "rows": rows}, t0)


if __name__ == "__main__":
    raise SystemExit(main())
