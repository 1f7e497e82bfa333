"""Test-set evaluation images/s (top-1/top-5) through the engine, against the released code's evaluation loop.

* **engine**: what ``train()`` runs at every evaluation: ``ressenet.data.eval_batches`` (the split moved to the
  device once, one multiply-add per batch to normalise) into ``ressenet.engine.train.evaluate`` (no_grad, loss,
  top-1, top-5 summed on the device, one host read at the end), batch ``--eval-batch-size`` (the engine's 1000),
  for each ``--switches`` entry (precision and channels-last; the engine evaluates the eager model, so compile
  does not apply).
* **reference**: the released script's ``test()``: a ``DataLoader(testset, batch_size=100, shuffle=False,
  num_workers=2)`` over PIL images with ``ToTensor(), Normalize(paper mean/std)``, eager NCHW float32 model,
  per batch ``loss.item()`` and its top-1/top-5 ``accuracy`` helper.

Both read the same test images (the CIFAR-10 JPEG copy by default) with the same weights, so their top-1/top-5
must agree (a check printed beside the speed). Weights are a fresh seeded initialisation unless ``--checkpoint``
gives trained ones (accuracy near chance then: the figure of interest is the speed). Each evaluation is warmed up
on its first batches, then timed ``--repeats`` times alternating engine and reference; medians are reported.

    .venv-bench/bin/python benchmarks/eval_throughput.py                       # engine + reference (~6 min CPU)
    python3 benchmarks/eval_throughput.py --reference none                      # engine only, no torchvision
    .venv-bench/bin/python benchmarks/eval_throughput.py --checkpoint runs/x/last.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def build(name: str, checkpoint: Path | None, num_classes: int) -> tuple[str, nn.Module]:
    """A model by registry name (seeded init), or the model and weights stored in an engine checkpoint."""
    from ressenet.models import create_model

    if checkpoint is None:
        torch.manual_seed(12)
        return name, create_model(name, num_classes=num_classes)
    from ressenet.engine.checkpoint import load_checkpoint
    from ressenet.engine.config import config_from_dict
    from ressenet.engine.setup import build_model

    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"], where=str(checkpoint))
    model = build_model(cfg, num_classes)
    model.load_state_dict(state["model"])
    return f"{cfg.model.name} ({checkpoint}, iter {state.get('iter')})", model


def engine_eval(model: nn.Module, data: common.RunData, switch: common.Switch, device: torch.device, batch_size: int,
                limit: int | None = None) -> tuple[float, dict[str, float]]:
    """(images/s, metrics) of one engine evaluation of the test split (``limit`` images: a warm-up)."""
    from ressenet.data import eval_batches
    from ressenet.engine.setup import autocast_context
    from ressenet.engine.evaluation import evaluate

    r = switch.resolved(device)
    model.to(device, memory_format=torch.channels_last if r.channels_last else torch.contiguous_format)
    ds = data.test if limit is None else data.test.subset(torch.arange(min(limit, len(data.test))))
    common.sync(device)
    t0 = time.perf_counter()
    batches = eval_batches(ds, batch_size, mean=data.mean, std=data.std, device=device,
                           channels_last=r.channels_last)
    res = evaluate(model, batches, amp=autocast_context(r.precision, device))
    common.sync(device)
    return res.images / (time.perf_counter() - t0), dataclasses.asdict(res)


class ReferenceEval:
    """The released script's ``test()`` loop over a map-style PIL test set."""

    def __init__(self, data: common.RunData, device: torch.device, *, batch_size: int = 100, workers: int = 2):
        from torchvision import transforms

        ds = data.test
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
        self.dataset = common.PILImages(ds.images.permute(0, 2, 3, 1).contiguous().numpy(), ds.labels.numpy(), tf)
        self.batch_size, self.workers, self.device = batch_size, workers, device

    def run(self, model: nn.Module, limit: int | None = None) -> tuple[float, dict[str, float]]:
        ds = self.dataset if limit is None else torch.utils.data.Subset(self.dataset,
                                                                        range(min(limit, len(self.dataset))))
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.workers)
        model.to(self.device, memory_format=torch.contiguous_format).eval()
        crit = nn.CrossEntropyLoss()
        n, loss_sum, top1_sum, top5_sum = 0, 0.0, 0.0, 0.0
        common.sync(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                outputs = model(inputs)
                loss = crit(outputs, targets)
                prec1, prec5 = common.accuracy(outputs.data, targets.data, topk=(1, 5))
                b = inputs.size(0)
                loss_sum += loss.item() * b
                top1_sum += prec1.item() * b
                top5_sum += prec5.item() * b
                n += b
        common.sync(self.device)
        rate = n / (time.perf_counter() - t0)
        return rate, {"loss": loss_sum / n, "top1": top1_sum / n, "top5": top5_sum / n, "images": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=common.DEFAULT_MODELS)
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="engine checkpoint to evaluate instead of a fresh model of the same name (repeatable)")
    parser.add_argument("--switches", default=None,
                        help="default: 'fp32,default' on the CPU, 'fp32,fp32+cl,bf16+cl' on CUDA")
    parser.add_argument("--eval-batch-size", type=int, default=None,
                        help="the engine's run.eval_batch_size (default: the engine's, 1000 on CUDA, 100 on the CPU)")
    parser.add_argument("--reference", choices=["auto", "none"], default="auto",
                        help="also time the released-code evaluation (needs torchvision)")
    parser.add_argument("--ref-batch-size", type=int, default=100, help="the released script's test batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup-images", type=int, default=2000, help="images evaluated untimed before each run")
    parser.add_argument("--repeats", type=int, default=3)
    common.add_data_args(parser)
    parser.set_defaults(test_limit=0)  # the whole test split
    args = parser.parse_args()
    common.apply_threads(args)

    device = common.resolve_device(args.device)
    default_switches = "fp32,fp32+cl,bf16+cl" if device.type == "cuda" else "fp32,default"
    switches = [common.parse_switch(s) for s in common.parse_list(args.switches or default_switches)]
    use_ref = args.reference == "auto"
    info = common.header("evaluation throughput: engine vs the released-code test loop", device,
                         with_torchvision=use_ref)
    t_start = time.perf_counter()
    from ressenet.engine.setup import resolve_eval_batch_size

    args.eval_batch_size = resolve_eval_batch_size(args.eval_batch_size, device)
    data = common.load_engine_data(args)
    n_classes = len(data.classes)
    print(f"data: {data.test.description}: {len(data.test)} test images; engine batch {args.eval_batch_size}, "
          f"reference batch {args.ref_batch_size} with {args.workers} workers; {args.repeats} alternating repeats "
          f"after {args.warmup_images} warm-up images; figures: images/s, median (min..max)")
    ref = ReferenceEval(data, device, batch_size=args.ref_batch_size, workers=args.workers) if use_ref else None

    ckpts = {}
    for c in args.checkpoint:
        from ressenet.engine.checkpoint import load_checkpoint

        ckpts[load_checkpoint(c)["config"]["model"]["name"]] = c
    models = common.parse_list(args.models)
    models += [m for m in ckpts if m not in models]

    results: dict[str, Any] = {"info": info, "models": {}}
    for name in models:
        label, model = build(name, ckpts.get(name), n_classes)
        row: dict[str, Any] = {"label": label, "engine": {s.name: [] for s in switches}, "reference": [],
                               "metrics": {}}
        for rep in range(args.repeats):
            for s in switches:
                engine_eval(model, data, s, device, args.eval_batch_size, limit=args.warmup_images)
                rate, m = engine_eval(model, data, s, device, args.eval_batch_size)
                row["engine"][s.name].append(rate)
                row["metrics"][f"engine {s.name}"] = m
                print(f"  [{name} rep {rep + 1}] engine {s.label(device):<22} {rate:9.1f} img/s  "
                      f"top-1 {m['top1']:6.2f}  top-5 {m['top5']:6.2f}", flush=True)
            if ref is not None:
                ref.run(model, limit=args.warmup_images)
                rate, m = ref.run(model)
                row["reference"].append(rate)
                row["metrics"]["reference"] = m
                print(f"  [{name} rep {rep + 1}] reference (released test loop) {rate:9.1f} img/s  "
                      f"top-1 {m['top1']:6.2f}  top-5 {m['top5']:6.2f}", flush=True)
        results["models"][name] = row

    print()
    print(f"{'model':<15} {'pipeline / switch':<30} {'images/s median (min..max)':>28} {'x reference':>11} "
          f"{'top-1':>7} {'top-5':>7}")
    for name, row in results["models"].items():
        ref_med = statistics.median(row["reference"]) if row["reference"] else None
        lines = [(f"engine {s.label(device)}", row["engine"][s.name], row["metrics"][f"engine {s.name}"])
                 for s in switches]
        if row["reference"]:
            lines.append(("reference (released test())", row["reference"], row["metrics"]["reference"]))
        for i, (lbl, vals, m) in enumerate(lines):
            ratio = f"{statistics.median(vals) / ref_med:10.2f}x" if ref_med else f"{'-':>11}"
            print(f"{name if i == 0 else '':<15} {lbl:<30} {common.fmt_rate(vals):>28} {ratio:>11} {m['top1']:7.2f} "
                  f"{m['top5']:7.2f}")
        row["summary"] = {"engine": {k: common.summary_stats(v) for k, v in row["engine"].items() if v},
                          "reference": common.summary_stats(row["reference"]) if row["reference"] else None}
        if "reference" in row["metrics"]:
            fp32 = [row["metrics"][f"engine {s.name}"] for s in switches if s.resolved(device).precision == "fp32"]
            worst = max((abs(m["top1"] - row["metrics"]["reference"]["top1"]) for m in fp32), default=0.0)
            print(f"{'':<15} check: fp32 engine top-1 within {worst:.2f} pp of the reference's")
    print("top-1/top-5 in percent on the whole test split"
          + ("" if ckpts else " (fresh seeded weights: about chance; pass --checkpoint for trained ones)"))
    return common.finish(info, args.json, results, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
