"""Fused training: several runs of one depth (models x seeds) trained together in one process.

``ressenet train --model resnet20,se_resnet20,res_se_net20 --seed 1,2,3 --out DIR`` trains the nine runs
``DIR/<model>-s<seed>`` at once. Each member is an ordinary run: its own initialisation (``torch.manual_seed(seed)``
before the model is built, as a separate run), its own data order and augmentation (a
:class:`~ressenet.data.TrainLoader` with its seed; the members share one stored copy of the pixels), its own
optimizer, and its own run directory with the usual files (``config.yaml`` with ``meta.fused_with``,
``metrics.jsonl``, ``last.pt``, ``summary.json``). ``ressenet eval``, resume and the report treat it as any run.

Two mechanisms run a group (``--fused-mechanism``; auto picks by device, from benchmarks/fused_throughput.py):

* ``sequential`` (the CPU's): the members step one after another with the single-run step
  (:func:`ressenet.engine.train.train_step`), so every member is bit-identical to its separate run. On the 2-core
  CPU of BENCHMARKS.md a ResNet-20 whose convolutions are grouped over N members (HFTA's horizontal fusion) trained
  at 0.55x the aggregate images/s of N dense runs at N = 8, so merging members into one network loses there.
* ``graphs`` (CUDA): each member's whole step (forward, loss, backward, SGD update, loss/accuracy accumulators) is
  captured once in a CUDA graph, and every iteration replays the members' graphs on their own CUDA streams. One
  member at batch 128 leaves an H200 mostly idle (kernels of a few microseconds, launch-bound); replayed graphs
  remove the launch cost and members' kernels run side by side. The arithmetic is the eager step's, with the same
  kernels (separate CUDA runs are torch.compile'd by default, so they agree with fused ones statistically, not to
  the bit). The learning rate is a float baked into the graph, so a member's graph is captured again at each
  milestone; the first ``WARMUP_STEPS`` steps run eagerly (cuDNN's algorithm search and the optimizer's momentum
  buffers must exist before capture).
"""
from __future__ import annotations

import difflib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ressenet.engine.checkpoint import atomic_write_json, atomic_write_text, save_checkpoint
from ressenet.engine.config import Config
from ressenet.engine.distributed import DistInfo
from ressenet.engine.train import (_eval_split, _MetricsLog, _prepare_run_dir, _summarize, _versions, build_model,
                                   cpu_compiler_found, load_data, lr_at, make_checkpoint, resolve_channels_last,
                                   resolve_compile, resolve_device, resolve_precision, restore_checkpoint,
                                   threading_main, train_step)
from ressenet.errors import RessenetError

__all__ = ["MECHANISMS", "FusedGroup", "train_fused", "member_dir_name", "fused_configs", "resolve_mechanism"]

MECHANISMS = ("auto", "sequential", "graphs")
WARMUP_STEPS = 3  # eager steps before a member's first capture (cuDNN autotuning, momentum buffers)
# Keys in which the members of one group may differ; everything else (data, protocol, precision, device) is shared.
MEMBER_KEYS = ("model.name", "run.seed", "run.out")


def member_dir_name(model: str, seed: int) -> str:
    """A member's run directory under the group's ``--out``: ``<model>-s<seed>``."""
    return f"{model}-s{seed}"


def _did_you_mean(name: str) -> str:
    from ressenet.models import list_models

    close = difflib.get_close_matches(name, list_models(), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def fused_configs(base: dict[str, Any], models: list[str], seeds: list[int], out: str,
                  config_file: str | None = None) -> list[Config]:
    """The members' configs: the product of ``models`` and ``seeds``, each in ``out/<model>-s<seed>``.

    Every name is checked before anything touches the disk. ``base`` holds the other overrides ({"section.key": v}).
    """
    from ressenet.engine.config import load_config
    from ressenet.models import create_model, is_model

    for m in models:
        if not is_model(m):
            raise RessenetError(f"unknown model {m!r} in --model; {_did_you_mean(m)}`ressenet models` lists them")
    if len(set(models)) != len(models) or len(set(seeds)) != len(seeds):
        raise RessenetError(f"--model {','.join(models)} --seed {','.join(map(str, seeds))} repeats a member; "
                            f"list each model and seed once")
    depths = {m: create_model(m).depth for m in models}
    if len(set(depths.values())) > 1:
        raise RessenetError(f"fused members must share one depth, got {depths}; run one command per depth")
    cfgs = []
    for m in models:
        for s in seeds:
            cfgs.append(load_config(config_file, {**base, "model.name": m, "run.seed": s,
                                                  "run.out": str(Path(out) / member_dir_name(m, s))}).validate())
    return cfgs


def resolve_mechanism(name: str, device: torch.device) -> str:
    if name not in MECHANISMS:
        raise RessenetError(f"--fused-mechanism {name!r} is not one of {', '.join(MECHANISMS)}")
    if name == "auto":
        return "graphs" if device.type == "cuda" else "sequential"
    if name == "graphs" and device.type != "cuda":
        raise RessenetError("--fused-mechanism graphs needs CUDA (it replays CUDA graphs); use sequential on the CPU")
    return name


def _shared_part(cfg: Config) -> dict[str, Any]:
    tree = cfg.to_dict()
    for key in MEMBER_KEYS:
        section, _, k = key.partition(".")
        tree[section].pop(k, None)
    return tree


@dataclass
class Member:
    """One run of a fused group: the objects a single run holds, plus its stream and graph under ``graphs``."""

    cfg: Config
    out: Path
    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: Any
    log: _MetricsLog
    n_params: int
    it: int
    best: dict[str, Any]
    steady: dict[str, Any]
    elapsed_before: float
    acc: torch.Tensor  # loss sum, correct (float64, on the device)
    first_bad: torch.Tensor  # first iteration with a non-finite loss, -1 if none
    step: torch.Tensor  # device-side copy of ``it``
    start_it: int = 0  # where this process started (the steady-state rate skips its first interval)
    images: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)
    last_rec: dict[str, Any] = field(default_factory=dict)
    it_interval: int = 0
    eager_left: int = WARMUP_STEPS
    stream: Any = None
    graph: Any = None
    graph_lr: float | None = None
    pool: Any = None
    static_x: torch.Tensor | None = None
    static_y: torch.Tensor | None = None
    failed: str | None = None

    @property
    def name(self) -> str:
        return self.out.name

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """The single-run loop's device-side bookkeeping, in place (so a CUDA graph can hold it)."""
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(loss), self.step, self.first_bad))
        self.acc[0] += loss.double() * len(y)
        self.acc[1] += (logits.argmax(1) == y).sum()
        self.step += 1


class FusedGroup:
    """The members of one fused job, built and resumed; :meth:`step` advances every unfinished member once."""

    def __init__(self, cfgs: list[Config], *, mechanism: str = "auto", overwrite: bool = False,
                 data: dict[str, Any] | None = None, parallel_streams: bool = True) -> None:
        from ressenet.data import TrainLoader
        from ressenet.models import count_params

        if not cfgs:
            raise RessenetError("a fused group needs at least one member")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RessenetError("fused training runs in one process; launch it without torchrun")
        shared = _shared_part(cfgs[0])
        for c in cfgs[1:]:
            if _shared_part(c) != shared:
                diff = sorted(f"{s}.{k}" for s in shared for k in shared[s] if shared[s][k] != _shared_part(c)[s][k])
                raise RessenetError(f"fused members differ in {', '.join(diff)}; only the model and the seed may "
                                    f"differ within one command")
        cfg0 = cfgs[0]
        self.device = resolve_device(cfg0.run.device)
        self.mechanism = resolve_mechanism(mechanism, self.device)
        self.precision = resolve_precision(cfg0.run.precision, self.device)
        if self.mechanism == "graphs" and self.precision == "fp16":
            raise RessenetError("--fused-mechanism graphs trains in fp32 or bf16 (fp16's loss scaling synchronises "
                                "with the host every step); use --precision bf16")
        self.channels_last = resolve_channels_last(cfg0.run.channels_last, self.device)
        names = [Path(c.run.out).name for c in cfgs]
        self.finished: dict[str, dict[str, Any]] = {}
        pending: list[tuple[Config, Path]] = []
        for c in cfgs:
            out, done = _prepare_run_dir(c, overwrite, True)
            if done is not None:
                self.finished[out.name] = done
            else:
                pending.append((c, out))
        self.members: list[Member] = []
        if not pending:
            return
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.data = data if data is not None else load_data(cfg0)
        classes = self.data["train"].classes
        if self.mechanism == "graphs":
            self.compile_on, compile_mode = False, "none"
        else:
            self.compile_on, compile_mode = resolve_compile(cfg0.run.compile, cfg0.run.compile_mode, self.device,
                                                            iters=cfg0.optim.iters)
            if self.compile_on and cfg0.run.compile and self.device.type == "cpu" and not cpu_compiler_found():
                raise RessenetError("torch.compile on the CPU needs a C++ compiler (g++ or clang++); install one or "
                                    "pass --no-compile")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        first_loader = None
        for c, out in pending:
            torch.manual_seed(c.run.seed)  # the separate run's initialisation
            model = build_model(c, len(classes))
            n_params = count_params(model)
            model.to(self.device, memory_format=fmt)
            optimizer = torch.optim.SGD(model.parameters(), lr=c.optim.lr, momentum=c.optim.momentum,
                                        weight_decay=c.optim.weight_decay, nesterov=c.optim.nesterov,
                                        **({"fused": True} if self.device.type == "cuda" else {}))
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
            loader = TrainLoader(self.data["train"], c.optim.batch_size, mean=self.data["mean"], std=self.data["std"],
                                 seed=c.run.seed, device=self.device, augment=c.data.augment,
                                 channels_last=self.channels_last, share_pixels_with=first_loader)
            first_loader = first_loader or loader
            it, best = 0, {"test_top1": -1.0, "test_top5": 0.0, "test_iter": None, "val_top1": -1.0, "val_iter": None}
            elapsed, steady = 0.0, {"images": 0, "seconds": 0.0}
            resumed = (out / "last.pt").exists()
            if resumed:
                it, best, elapsed, steady = restore_checkpoint(out / "last.pt", model, optimizer, scaler, loader,
                                                               self.device)
            step_model = torch.compile(model, mode=compile_mode) if self.compile_on else model
            tree = c.to_dict()
            tree["meta"] = _versions(self.device) | {
                "precision": self.precision, "channels_last": self.channels_last,
                "compile": compile_mode if self.compile_on else False, "world_size": 1,
                "data": self.data["train"].description, "fused_with": names, "fused_mechanism": self.mechanism}
            atomic_write_text(out / "config.yaml", yaml.safe_dump(tree, sort_keys=False))
            dev = self.device
            m = Member(cfg=c, out=out, model=model, step_model=step_model, optimizer=optimizer, scaler=scaler,
                       loader=loader, log=_MetricsLog(out / "metrics.jsonl", True, it if resumed else None),
                       n_params=n_params, it=it, best=best, steady=steady, elapsed_before=elapsed,
                       acc=torch.zeros(2, device=dev, dtype=torch.float64),
                       first_bad=torch.full((), -1, device=dev, dtype=torch.int64),
                       step=torch.full((), it, device=dev, dtype=torch.int64), start_it=it, it_interval=it)
            if self.mechanism == "graphs":
                # parallel_streams=False (benchmarks only) replays every graph on one stream: no overlap.
                first = self.members[0].stream if self.members else None
                m.stream = torch.cuda.Stream(dev) if parallel_streams or first is None else first
            self.members.append(m)
        if self.mechanism == "graphs":
            self.amp: Any = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) \
                if self.precision == "bf16" else _null()
        else:
            from ressenet.engine.train import autocast_context

            self.amp = autocast_context(self.precision, self.device)
        self.release()  # members' streams see the weights and state built on the default stream

    # -- stepping ---------------------------------------------------------------------------------------------
    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if m.failed is None and m.it < m.cfg.optim.iters]

    def step(self) -> list[Member]:
        """One training step of every active member; returns the members that stepped."""
        stepped = self.active
        for m in stepped:
            if self.mechanism == "graphs":
                self._step_graph(m)
            else:
                self._step_eager(m)
            m.images += m.cfg.optim.batch_size
            m.it += 1
        return stepped

    def _set_lr(self, m: Member, lr: float) -> None:
        for g in m.optimizer.param_groups:
            g["lr"] = lr

    def _step_eager(self, m: Member) -> None:
        self._set_lr(m, lr_at(m.cfg, m.it))
        x, y = m.loader.next()
        loss, logits = train_step(m.step_model, m.optimizer, m.scaler, self.amp, x, y)
        m.accumulate(loss, logits, y)

    def _step_graph(self, m: Member) -> None:
        lr = lr_at(m.cfg, m.it)
        with torch.cuda.stream(m.stream):
            x, y = m.loader.next()
            if m.eager_left > 0:
                m.eager_left -= 1
                self._set_lr(m, lr)
                loss, logits = train_step(m.model, m.optimizer, m.scaler, self.amp, x, y)
                m.accumulate(loss, logits, y)
                return
            if m.graph is None or m.graph_lr != lr:
                self._capture(m, lr, x, y)
            m.static_x.copy_(x)  # type: ignore[union-attr]
            m.static_y.copy_(y)  # type: ignore[union-attr]
            m.graph.replay()

    def _capture(self, m: Member, lr: float, x: torch.Tensor, y: torch.Tensor) -> None:
        """Records the member's step with ``lr`` (recording runs nothing: the replay after it does the step)."""
        self._set_lr(m, lr)
        if m.static_x is None:
            m.static_x, m.static_y = torch.empty_like(x), torch.empty_like(y)
        if m.graph is not None:
            torch.cuda.synchronize(self.device)  # the old graph may still be replaying
        # The new graph shares the old one's memory pool (it never replays again). The old graph must stay alive
        # until the new capture has begun: destroying it first releases the pool, and capturing into a released
        # pool fails an internal assertion of PyTorch's allocator (seen on an H200, torch 2.11).
        old = m.graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=m.pool, stream=m.stream):
            loss, logits = train_step(m.model, m.optimizer, m.scaler, self.amp, m.static_x, m.static_y)
            m.accumulate(loss, logits, m.static_y)
        m.graph, m.graph_lr, m.pool = graph, lr, graph.pool()
        del old

    def sync(self) -> None:
        """Waits for every member's queued work (before reading its weights or accumulators on the host)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """After host-side work on the default stream (evaluation, resets), members' streams wait for it."""
        if self.mechanism == "graphs":
            cur = torch.cuda.current_stream(self.device)
            for m in self.members:
                if m.stream is not cur:
                    m.stream.wait_stream(cur)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def train_fused(cfgs: list[Config], *, overwrite: bool = False, mechanism: str = "auto") -> list[dict[str, Any]]:
    """Trains the members of ``cfgs`` together; returns their summaries (finished ones included, not retrained).

    SIGINT/SIGTERM finish the current step, checkpoint every member and exit; the same command resumes.

    Raises:
        RessenetError: bad group, or a member whose loss became non-finite (the others still finish first).
    """
    group = FusedGroup(cfgs, mechanism=mechanism, overwrite=overwrite)
    summaries = dict(group.finished)
    for name in group.finished:
        print(f"{Path(cfgs[0].run.out).parent / name} already finished; not retrained")
    if not group.members:
        return [summaries[Path(c.run.out).name] for c in cfgs]
    verbose = cfgs[0].run.progress != "none"
    dist = DistInfo()
    if verbose:
        start = sorted({m.it for m in group.members})
        print(f"fused training of {len(group.members)} members ({', '.join(m.name for m in group.members)}) on "
              f"{group.device}, mechanism {group.mechanism}, {group.precision}; from iteration "
              f"{'/'.join(map(str, start))}", flush=True)

    stop: list[int] = []
    old_handlers = {}
    if threading_main():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda s, _f: stop.append(s))
    t_start = time.perf_counter()
    t_interval = t_start
    try:
        while group.active:
            stepped = group.step()
            due = [m for m in stepped if _boundary(m)]
            if not due and not stop:
                continue
            group.sync()
            now = time.perf_counter()
            images = sum((m.it - m.it_interval) * m.cfg.optim.batch_size for m in due)
            for m in due:
                _boundary_work(group, m, now - t_interval, now - t_start, dist)
            if stop:
                for m in group.members:
                    if m.failed is None and m.it < m.cfg.optim.iters:
                        save_checkpoint(m.out / "last.pt", _ckpt(group, m, now - t_start))
            group.release()
            if verbose and due:
                losses = [m.last_rec["train_loss"] for m in due if m.last_rec]
                tops = [m.last_rec["test_top1"] for m in due if "test_top1" in m.last_rec and m.last_rec["iter"] == m.it]
                test = f"  test top-1 {min(tops):.2f}..{max(tops):.2f}%" if tops else ""
                print(f"iter {max(m.it for m in due):>6}  {len(due)} members: train loss {min(losses):.3f}.."
                      f"{max(losses):.3f}{test}  {images / max(now - t_interval, 1e-9):,.0f} img/s together",
                      flush=True)
            t_interval = time.perf_counter()
            if stop:
                print(f"stopped by {signal.Signals(stop[0]).name}; every member checkpointed; run the same command "
                      f"to resume", file=sys.stderr)
                raise SystemExit(128 + stop[0])
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)

    failed = []
    for m in group.members:
        if m.failed:
            failed.append(m.failed)
            continue
        if not m.last_eval:  # resumed from a checkpoint written at the last iteration
            test = _eval_split(m.model, group.data["test"], group.data, m.cfg, group.device, group.channels_last,
                               group.amp, dist)
            m.last_eval = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
        wall = m.elapsed_before + time.perf_counter() - t_start
        summary = _summarize(m.cfg, m.out, group.data, m.last_eval, m.best, m.n_params, wall, m.steady, m.model,
                             group.device, group.channels_last, group.amp, dist)
        atomic_write_json(m.out / "summary.json", summary)
        summaries[m.name] = summary
    if failed:
        raise RessenetError("; ".join(failed))
    return [summaries[Path(c.run.out).name] for c in cfgs]


def _boundary(m: Member) -> bool:
    r, it = m.cfg.run, m.it
    return it == m.cfg.optim.iters or any(every and it % every == 0 for every in (r.log_every, r.eval_every,
                                                                                    r.ckpt_every))


def _boundary_work(group: FusedGroup, m: Member, seconds: float, elapsed: float, dist: DistInfo) -> None:
    """The single-run loop's boundary for one member: check the loss, log, evaluate, checkpoint."""
    cfg, it = m.cfg, m.it
    is_end = it == cfg.optim.iters
    do_log = is_end or (cfg.run.log_every and it % cfg.run.log_every == 0)
    do_eval = is_end or (cfg.run.eval_every and it % cfg.run.eval_every == 0)
    do_ckpt = is_end or (cfg.run.ckpt_every and it % cfg.run.ckpt_every == 0)
    bad = int(m.first_bad.item())
    if bad >= 0:
        m.failed = (f"{m.out}: the training loss became non-finite at iteration {bad + 1} (lr {lr_at(cfg, bad):g}); "
                    f"its last good checkpoint is kept in {m.out / 'last.pt'}; lower --lr or check the data")
        print(m.failed, file=sys.stderr)
        return
    if m.it_interval > m.start_it:  # steady state: skip this process's first interval (start-up, autotuning)
        m.steady["images"] += (it - m.it_interval) * cfg.optim.batch_size
        m.steady["seconds"] += seconds
    tot = m.acc.tolist()
    n = max(m.images, 1)
    rec: dict[str, Any] = {"kind": "train", "iter": it, "epoch": m.loader.epoch, "lr": lr_at(cfg, it - 1),
                           "train_loss": tot[0] / n, "train_top1": 100.0 * tot[1] / n,
                           "images_per_second": (it - m.it_interval) * cfg.optim.batch_size / max(seconds, 1e-9),
                           "time": m.elapsed_before + elapsed}
    m.acc.zero_()
    m.images = 0
    if do_eval:
        rec["kind"] = "eval"
        test = _eval_split(m.model, group.data["test"], group.data, cfg, group.device, group.channels_last,
                           group.amp, dist)
        rec.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
        if test["top1"] > m.best["test_top1"]:
            m.best.update(test_top1=test["top1"], test_top5=test["top5"], test_iter=it)
        if group.data["val"] is not None:
            val = _eval_split(m.model, group.data["val"], group.data, cfg, group.device, group.channels_last,
                              group.amp, dist)
            rec.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
            if val["top1"] > m.best["val_top1"]:
                m.best.update(val_top1=val["top1"], val_iter=it)
                save_checkpoint(m.out / "best.pt", _ckpt(group, m, elapsed))
        m.last_eval = rec
    if do_log or do_eval:
        m.log.write(rec)
        m.last_rec = rec
    if do_ckpt:
        save_checkpoint(m.out / "last.pt", _ckpt(group, m, elapsed))
    m.it_interval = it


def _ckpt(group: FusedGroup, m: Member, elapsed: float) -> dict[str, Any]:
    return make_checkpoint(m.cfg, m.it, m.model, m.optimizer, m.scaler, m.loader, m.best, m.elapsed_before + elapsed,
                           m.steady, group.device)
