"""How to compute N members' convolutions at once: the candidates of horizontal fusion, one layer at a time.

For each 3x3 convolution shape of a CIFAR ResNet (16 channels at 32x32, 32 at 16x16, 64 at 8x8), batch 128 per
member, times forward + backward (input and weight gradients) of N members' convolutions computed as

    dense    N ordinary convolutions, one per member (what fused mechanism sequential runs)
    grouped  one convolution with groups=N over (B, N*C, H, W) (what mechanism grouped runs; HFTA)
    bmm      im2col (unfold) + one batched matrix product over the members

and prints aggregate images/s (N * batch / median seconds) and each candidate against dense. Channels-last on both
devices, as the engine trains.

    python benchmarks/conv_candidates.py --device cpu --members 1,4,8
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import _common as common

SHAPES = ((16, 32), (32, 16), (64, 8))  # (channels, spatial size) of the three stages


def dense(xs: list[torch.Tensor], ws: list[torch.Tensor], n: int) -> torch.Tensor:
    return sum(F.conv2d(x, w, padding=1).sum() for x, w in zip(xs, ws))  # type: ignore[return-value]


def grouped(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    return F.conv2d(x, w, padding=1, groups=n).sum()


def bmm(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    b, nc, h, wd = x.shape
    cols = F.unfold(x, 3, padding=1)  # (B, N*C*9, H*W), member-major
    cols = cols.view(b, n, -1, h * wd).permute(1, 2, 0, 3).reshape(n, -1, b * h * wd)  # (N, C*9, B*H*W)
    out = torch.bmm(w.reshape(n, w.shape[0] // n, -1), cols)  # (N, Cout, B*H*W)
    return out.sum()


def inputs(kind: str, n: int, c: int, s: int, batch: int, device: torch.device) -> tuple:
    fmt = torch.channels_last
    if kind == "dense":
        xs = [torch.randn(batch, c, s, s, device=device).contiguous(memory_format=fmt).requires_grad_()
              for _ in range(n)]
        ws = [torch.randn(c, c, 3, 3, device=device).contiguous(memory_format=fmt).requires_grad_() for _ in range(n)]
        return xs, ws
    x = torch.randn(batch, n * c, s, s, device=device).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(n * c, c, 3, 3, device=device).contiguous(memory_format=fmt).requires_grad_()
    return x, w


def time_case(fn: Callable, args: tuple, n: int, device: torch.device, repeats: int) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(*args, n).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(3):
        once()
    return statistics.median(once() for _ in range(repeats))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", default="1,4,8")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"N members' 3x3 convolutions, forward + backward, batch {args.batch_size} per member, {device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"{'C':>4}{'HxW':>7}{'N':>4}{'dense img/s':>13}{'grouped':>10}{'x dense':>9}{'bmm':>10}{'x dense':>9}")
    rows = []
    for n in (int(v) for v in args.members.split(",")):
        for c, s in SHAPES:
            rate = {}
            for kind, fn in (("dense", dense), ("grouped", grouped), ("bmm", bmm)):
                t = time_case(fn, inputs(kind, n, c, s, args.batch_size, device), n, device, args.repeats)
                rate[kind] = n * args.batch_size / t
            print(f"{c:>4}{f'{s}x{s}':>7}{n:>4}{rate['dense']:>13,.0f}{rate['grouped']:>10,.0f}"
                  f"{rate['grouped'] / rate['dense']:>9.2f}{rate['bmm']:>10,.0f}{rate['bmm'] / rate['dense']:>9.2f}",
                  flush=True)
            rows.append({"channels": c, "size": s, "members": n, **{f"{k}_images_per_second": v
                                                                    for k, v in rate.items()}})
    common.write_json(args.json, {"device": str(device), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
