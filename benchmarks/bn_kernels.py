"""Would hand-written batch-norm kernels shorten the CPU training step? An experiment; the answer was no.

Batch norm and its neighbours (ReLU, the residual add) are the compiled step's own kernels on the CPU; the rest is
oneDNN's convolutions (``step_profile.py``). Inductor's generated C++ for a channels-last batch norm is far slower
than memory allows when timed alone on a cache-resident tensor, so this script asks what the step gains from
kernels that are not. ``bn_act.c`` (beside this file, not part of the package) does training-mode batch norm
+ optional residual add + optional ReLU in two passes forward and two backward. It is built with the C compiler
(``$CC`` or ``cc``) and registered as a ``torch.library`` custom op with its own backward, which
``torch.compile`` calls as an opaque kernel. Three parts:

1. Correctness against eager PyTorch (outputs, input/weight/bias/residual gradients, running statistics) on
   several shapes; the script stops if any relative error exceeds 1e-4.
2. The kernels alone on a cache-resident tensor, next to eager PyTorch and ``torch.add`` (a copy's bandwidth).
3. In the compiled step of ``--model`` (a basic-block net): forward and backward ms of the default model against
   the same model with every batch norm of its blocks and stem on these kernels, alternating rounds, medians; and
   the same model with its batch norms removed (``nn.Identity``), which bounds what any batch-norm kernel could
   save.

    python3 benchmarks/bn_kernels.py --json benchmarks/results/bn_kernels.json
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from ressenet.models import create_model

SOURCE = Path(__file__).resolve().parent / "bn_act.c"
CL = torch.channels_last
_lib: ctypes.CDLL | None = None


def build(out_dir: Path) -> ctypes.CDLL:
    """Compile ``bn_act.c`` into a shared library and load it (OpenMP resolves to the libgomp torch loaded)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("bn_kernels.py: no C compiler found; install gcc or clang, or set CC")
    so = out_dir / "bn_act.so"
    cmd = [cc, "-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-o", str(so), str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"bn_kernels.py: building {SOURCE.name} failed:\n{done.stderr}")
    lib = ctypes.CDLL(str(so))
    p, i64, dbl, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.bn_act_forward.argtypes = [p, p, p, p, p, p, i64, i64, dbl, i32, i32]
    lib.bn_act_backward.argtypes = [p, p, p, p, p, p, p, p, p, i64, i64, dbl, i32, i32]
    return lib


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rows(x: Tensor) -> tuple[int, int]:
    c = x.shape[1]
    return x.numel() // c, c


@torch.library.custom_op("ressenet_bench::bn_act", mutates_args=())
def bn_act(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Tensor, eps: float,  # noqa: UP045
           relu: bool) -> tuple[Tensor, Tensor]:
    """(act(bn(x) [+ residual]), stats (4, C): mean, biased variance, scale, shift) with batch statistics."""
    x = x.contiguous(memory_format=CL)
    residual = None if residual is None else residual.contiguous(memory_format=CL)
    m, c = _rows(x)
    y, stats = torch.empty_like(x), x.new_empty(4, c)
    if _lib.bn_act_forward(x.data_ptr(), _ptr(residual), y.data_ptr(), weight.contiguous().data_ptr(),
                           bias.contiguous().data_ptr(), stats.data_ptr(), m, c, eps, int(relu),
                           torch.get_num_threads()):
        raise RuntimeError("bn_act_forward: bad arguments")
    return y, stats


@bn_act.register_fake
def _(x, residual, weight, bias, eps, relu):
    return torch.empty_like(x, memory_format=CL), x.new_empty(4, x.shape[1])


@torch.library.custom_op("ressenet_bench::bn_act_backward", mutates_args=())
def bn_act_backward(dy: Tensor, x: Tensor, residual: Optional[Tensor], weight: Tensor, stats: Tensor,  # noqa: UP045
                    eps: float, relu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dresidual (empty without one), dweight, dbias)."""
    dy, x = dy.contiguous(memory_format=CL), x.contiguous(memory_format=CL)
    residual = None if residual is None else residual.contiguous(memory_format=CL)
    m, c = _rows(x)
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if residual is not None else x.new_empty(0)
    dw, db = weight.new_empty(c), weight.new_empty(c)
    if _lib.bn_act_backward(dy.data_ptr(), x.data_ptr(), _ptr(residual), weight.contiguous().data_ptr(),
                            stats.data_ptr(), dx.data_ptr(), None if residual is None else dres.data_ptr(),
                            dw.data_ptr(), db.data_ptr(), m, c, eps, int(relu), torch.get_num_threads()):
        raise RuntimeError("bn_act_backward: bad arguments")
    return dx, dres, dw, db


@bn_act_backward.register_fake
def _(dy, x, residual, weight, stats, eps, relu):
    c = x.shape[1]
    dres = torch.empty_like(x, memory_format=CL) if residual is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=CL), dres, weight.new_empty(c), weight.new_empty(c)


def _setup(ctx, inputs, output) -> None:
    x, residual, weight, _bias, eps, relu = inputs
    ctx.save_for_backward(x, residual, weight, output[1])
    ctx.eps, ctx.relu, ctx.has_residual = eps, relu, residual is not None


def _backward(ctx, grad_y, _grad_stats):
    x, residual, weight, stats = ctx.saved_tensors
    dx, dres, dw, db = bn_act_backward(grad_y, x, residual, weight, stats, ctx.eps, ctx.relu)
    return dx, (dres if ctx.has_residual else None), dw, db, None, None


bn_act.register_autograd(_backward, setup_context=_setup)


def bn_forward(bn: nn.BatchNorm2d, x: Tensor, relu: bool, residual: Tensor | None = None) -> Tensor:
    """``act(bn(x) [+ residual])`` through the hand-written kernels in training, PyTorch's otherwise."""
    if not (bn.training and bn.momentum is not None and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=CL)):
        y = bn(x) if residual is None else bn(x) + residual
        return F.relu(y) if relu else y
    y, stats = bn_act(x, residual, bn.weight, bn.bias, bn.eps, relu)
    with torch.no_grad():  # nn.BatchNorm2d's running-statistics update (unbiased variance), same momentum
        m = x.numel() // x.shape[1]
        bn.running_mean.lerp_(stats[0], bn.momentum)
        bn.running_var.lerp_(stats[1] * (m / (m - 1)), bn.momentum)
        bn.num_batches_tracked.add_(1)
    return y


def _block_forward(self, x: Tensor) -> Tensor:
    """``BasicBlock.forward`` with its batch norms on the kernels; the residual add and ReLU fused into bn2's."""
    out = bn_forward(self.bn1, self.conv1(x), True)
    if self.se is None and self.shortcut is not None:
        return bn_forward(self.bn2, self.conv2(out), True, self.shortcut(x))
    out = bn_forward(self.bn2, self.conv2(out), False)
    if self.se is not None:
        out = self.se(out)
    if self.shortcut is not None:
        out = out + self.shortcut(x)
    return F.relu(out)


def _features_forward(self, x: Tensor) -> Tensor:
    x = bn_forward(self.bn1, self.conv1(x), True)
    return self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3))


def make_model(name: str, variant: str) -> nn.Module:
    """``default``, ``kernels`` (batch norms of the blocks and the stem on bn_act.c) or ``no_bn`` (removed)."""
    torch.manual_seed(0)
    model = create_model(name)
    if model.block_name != "BasicBlock":
        raise SystemExit(f"bn_kernels.py: {name} has {model.block_name} blocks; this experiment patches BasicBlock")
    if variant == "kernels":
        for block in model.blocks():
            block.forward = _block_forward.__get__(block)
        model.forward_features = _features_forward.__get__(model)
    elif variant == "no_bn":
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, child_name, nn.Identity())
    return model.to(memory_format=CL).train()


# ---------------------------------------------------------------------------------------------------------------
def check(shapes: list[tuple[int, int]], batch: int) -> float:
    """Largest relative error against eager PyTorch over shapes x ReLU x residual; prints one line per case."""
    worst = 0.0
    for c, side in shapes:
        for relu in (True, False):
            for with_res in (False, True):
                torch.manual_seed(c * 100 + side)
                ours, ref = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
                with torch.no_grad():
                    ours.weight.uniform_(0.5, 1.5)
                    ours.bias.normal_()
                ref.load_state_dict(ours.state_dict())
                x = (torch.randn(batch, c, side, side) * 3 + 2).contiguous(memory_format=CL)
                res = torch.randn_like(x) if with_res else None
                g = torch.randn_like(x)
                x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
                r1 = res.clone().requires_grad_() if with_res else None
                r2 = res.clone().requires_grad_() if with_res else None
                y1 = bn_forward(ours, x1, relu, r1)
                y2 = ref(x2) if r2 is None else ref(x2) + r2
                y1.backward(g)
                # ReLU's gradient mask is taken from our output: where a value sits within rounding of 0 the two
                # forwards may disagree on its sign, and each backward must follow its own forward.
                y2.backward(g * (y1 > 0) if relu else g)
                pairs = {"y": (y1, F.relu(y2) if relu else y2), "dx": (x1.grad, x2.grad),
                         "dw": (ours.weight.grad, ref.weight.grad), "db": (ours.bias.grad, ref.bias.grad),
                         "running_mean": (ours.running_mean, ref.running_mean),
                         "running_var": (ours.running_var, ref.running_var)}
                if with_res:
                    pairs["dres"] = (r1.grad, r2.grad)
                errs = {k: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for k, (a, b) in pairs.items()}
                worst = max(worst, *errs.values())
                print(f"  C={c:<3} {side:>2}x{side:<2} relu={relu!s:<5} residual={with_res!s:<5} largest relative "
                      f"error {max(errs.values()):.1e} ({max(errs, key=errs.get)})")
    return worst


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median ms of one call of ``fn`` over ``reps`` calls, after 3 untimed ones."""
    for _ in range(3):
        fn()
    cpu = torch.device("cpu")
    return statistics.median(common.timed_steps(fn, 1, cpu) for _ in range(reps)) * 1e3


def _alone_row(c: int, side: int, batch: int, reps: int) -> dict[str, float]:
    x = torch.randn(batch, c, side, side).contiguous(memory_format=CL)
    w, b, g = torch.rand(c) + 0.5, torch.randn(c), torch.randn_like(x)
    _, stats = bn_act(x, None, w, b, 1e-5, True)
    xe = x.clone().requires_grad_()
    we, be = w.clone().requires_grad_(), b.clone().requires_grad_()

    def eager_fwd_bwd() -> None:
        F.relu(F.batch_norm(xe, None, None, we, be, training=True)).backward(g)

    return {"channels": c, "side": side, "MB": x.numel() * 4 / 1e6,
            "kernel_forward_ms": _median_ms(lambda: bn_act(x, None, w, b, 1e-5, True), reps),
            "kernel_backward_ms": _median_ms(lambda: bn_act_backward(g, x, None, w, stats, 1e-5, True), reps),
            "eager_forward_backward_ms": _median_ms(eager_fwd_bwd, reps),
            "add_ms": _median_ms(lambda: torch.add(x, g), reps)}


def alone(shapes: list[tuple[int, int]], batch: int, reps: int) -> list[dict[str, float]]:
    """ms of the kernels on one cache-resident tensor, next to eager PyTorch and torch.add."""
    rows = []
    for c, side in shapes:
        row = _alone_row(c, side, batch, reps)
        rows.append(row)
        mb = row["MB"]
        print(f"  C={c:<3} {side:>2}x{side:<2} {mb:4.1f} MB: kernels forward {row['kernel_forward_ms']:.2f} ms "
              f"({3 * mb / row['kernel_forward_ms']:.0f} GB/s), backward {row['kernel_backward_ms']:.2f} ms "
              f"({5 * mb / row['kernel_backward_ms']:.0f} GB/s); eager forward+backward "
              f"{row['eager_forward_backward_ms']:.2f} ms; torch.add {row['add_ms']:.2f} ms "
              f"({3 * mb / row['add_ms']:.0f} GB/s)")
    return rows


def in_step(name: str, variants: list[str], batch: int, rounds: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """Per variant, forward and backward ms per step (+ SGD in the backward figure), alternating rounds."""
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (batch,))
    runners = {}
    for v in variants:
        model = make_model(name, v)
        compiled = torch.compile(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def run(compiled=compiled, opt=opt) -> tuple[float, float]:
            t0 = time.perf_counter()
            loss = F.cross_entropy(compiled(x), y)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return t1 - t0, time.perf_counter() - t1

        for _ in range(3):  # compile and warm up
            run()
        runners[v] = run
    out = {v: {"forward_ms": [], "backward_ms": [], "step_ms": []} for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            f = b = 0.0
            for _ in range(steps):
                tf, tb = runners[v]()
                f, b = f + tf, b + tb
            out[v]["forward_ms"].append(f / steps * 1e3)
            out[v]["backward_ms"].append(b / steps * 1e3)
            out[v]["step_ms"].append((f + b) / steps * 1e3)
    return out


def main() -> int:
    global _lib
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="res_se_net20", help="a basic-block net of the registry")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds in the step comparison")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--reps", type=int, default=30, help="timings per kernel alone (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    common.apply_threads(args)
    device = torch.device("cpu")
    info = common.header("hand-written batch-norm kernels in the CPU step", device)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        _lib = build(Path(tmp))
        shapes = [(16, 32), (32, 16), (64, 8), (24, 7), (3, 5)]
        print(f"\n1. against eager PyTorch, batch {args.batch_size} (mean 2, std 3 inputs)")
        worst = check(shapes, args.batch_size)
        if worst > 1e-4:
            print(f"largest relative error {worst:.1e} > 1e-4: the kernels are wrong; no timings")
            return 1
        print(f"\n2. alone, cache-resident, channels-last fp32, batch {args.batch_size}, median of {args.reps}")
        alone_rows = alone(shapes[:3], args.batch_size, args.reps)
        variants = ["default", "kernels", "no_bn"]
        print(f"\n3. in the compiled step of {args.model}, batch {args.batch_size}: {args.rounds} alternating rounds "
              f"of {args.steps} steps, ms per step, median (min..max)")
        step = in_step(args.model, variants, args.batch_size, args.rounds, args.steps)
    base = {k: statistics.median(v) for k, v in step["default"].items()}
    for v in variants:
        cells = []
        for k in ("forward_ms", "backward_ms", "step_ms"):
            vals = step[v][k]
            cells.append(f"{k.split('_')[0]} {statistics.median(vals):6.1f} ({min(vals):.0f}..{max(vals):.0f})")
        pairs = [a / b for a, b in zip(step["default"]["step_ms"], step[v]["step_ms"])]
        print(f"  {v:<8} " + "  ".join(cells) + f"   default/this {base['step_ms'] / statistics.median(step[v]['step_ms']):.3f}x"
              f" (median of per-round ratios {statistics.median(pairs):.3f}x)")
    payload = {**info, "model": args.model, "batch_size": args.batch_size, "largest_relative_error": worst,
               "alone": alone_rows, "in_step": step, "rounds": args.rounds, "steps": args.steps}
    return common.finish(info, args.json, payload, t_start)


if __name__ == "__main__":
    sys.exit(main())
