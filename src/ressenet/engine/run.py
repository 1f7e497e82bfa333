"""One training run: its objects, built whole from the config, the resolved :class:`Settings` and the data; one SGD
step; the boundary work (log, evaluate, checkpoint); the summary.

engine/train.py's loop drives one run; engine/fused.py's steppers drive several, reusing :meth:`Run.step` and
:meth:`Run.boundary`, so a run trained alone and the same run as a fused member write the same files.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ressenet.data import TrainLoader
from ressenet.engine.checkpoint import CHECKPOINT_VERSION, open_checkpoint, restore_checkpoint, save_checkpoint
from ressenet.engine.config import Config
from ressenet.engine.distributed import DistInfo, all_reduce_sum
from ressenet.engine.evaluation import Scores, eval_split
from ressenet.engine.gradprobe import GradProbe
from ressenet.engine.records import MetricsLog, summary_record
from ressenet.engine.rundir import RunDir
from ressenet.engine.setup import RunData, Settings, autocast_context, build_model
from ressenet.errors import RessenetError
from ressenet.models import count_params

__all__ = ["TrainState", "Run", "NonFiniteLoss", "lr_at", "train_step", "make_optimizer"]


def lr_at(cfg: Config, it: int) -> float:
    """Step schedule: ``lr * gamma ** (number of milestones <= it)`` (x0.1 at 32k and 48k in the paper)."""
    return cfg.optim.lr * cfg.optim.gamma ** bisect_right(cfg.optim.milestones, it)


def make_optimizer(params: Any, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """The paper's SGD (momentum, weight decay, optional Nesterov) at ``optim.lr``; fused kernels on CUDA."""
    o = cfg.optim
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov,
                           **({"fused": True} if device.type == "cuda" else {}))


def train_step(step_model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp: Any,
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, update on (x, y); returns the detached (loss, logits). The lr must already be set."""
    with amp:
        logits = step_model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


class NonFiniteLoss(RessenetError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def _no_best() -> dict[str, Any]:
    return {"test_top1": -1.0, "test_top5": 0.0, "test_iter": None, "val_top1": -1.0, "val_iter": None}


@dataclass
class TrainState:
    """Where a run is: the iteration, the best evaluations so far, its costs. ``state_dict`` goes into ``last.pt``."""

    it: int = 0
    best: dict[str, Any] = field(default_factory=_no_best)
    wall_before: float = 0.0  # seconds spent by earlier processes of this run
    steady: dict[str, Any] = field(default_factory=lambda: {"images": 0, "seconds": 0.0})
    start_it: int = 0  # where this process started: its first interval is not steady state
    last_eval: dict[str, Any] = field(default_factory=dict)

    def state_dict(self, wall: float) -> dict[str, Any]:
        """The progress part of ``last.pt``; ``wall``: seconds this run has trained, all processes together."""
        return {"iter": self.it, "best": dict(self.best), "wall_seconds": wall, "steady": dict(self.steady)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes up the progress a checkpoint recorded (``state``: the whole checkpoint)."""
        self.it = self.start_it = int(state["iter"])
        self.best, self.steady = dict(state["best"]), dict(state["steady"])
        self.wall_before = float(state["wall_seconds"])


@dataclass
class Run:
    """One run, built whole by :meth:`build`: model, optimizer, data stream, device-side accumulators, its log."""

    cfg: Config
    out: Path
    data: RunData
    settings: Settings
    dist: DistInfo
    amp: Any  # the autocast context of the step and of evaluation
    model: nn.Module  # the raw model: its state_dict is the run's
    step_model: nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: TrainLoader
    n_params: int
    state: TrainState
    log: MetricsLog
    resumed: bool
    acc: torch.Tensor  # loss sum, correct (float64): accumulated on the device between boundaries
    first_bad: torch.Tensor  # first non-finite iteration, or -1
    step_count: torch.Tensor  # device-side copy of state.it
    it_interval: int  # iteration of the last boundary
    images: int = 0  # seen on this rank since the last boundary

    @classmethod
    def build(cls, cfg: Config, out: Path, data: RunData, settings: Settings, dist: DistInfo | None = None, *,
              share_pixels_with: TrainLoader | None = None, amp: Any = None, compile_step: bool = True) -> Run:
        """The run's objects as a separate run of ``cfg`` builds them (``torch.manual_seed(seed)`` before the model),
        resumed from ``out/last.pt`` when present. ``amp`` replaces the settings' autocast context;
        ``compile_step=False`` keeps the step eager whatever ``settings.compile`` says (a fused mechanism that
        compiles its own network)."""
        dist = dist or DistInfo()
        device = settings.torch_device
        if cfg.run.sync_bn and device.type != "cuda":
            raise RessenetError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernels); drop --sync-bn")
        torch.manual_seed(cfg.run.seed)  # model init identical on every rank (DDP also broadcasts rank 0's)
        model = build_model(cfg, len(data.classes))
        n_params = count_params(model)
        if cfg.run.sync_bn and dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device, memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format)
        optimizer = make_optimizer(model.parameters(), cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        loader = TrainLoader(data.train, cfg.optim.batch_size, mean=data.mean, std=data.std, seed=cfg.run.seed,
                             device=device, augment=cfg.data.augment, rank=dist.rank, world_size=dist.world_size,
                             channels_last=settings.channels_last, share_pixels_with=share_pixels_with)
        state = TrainState()
        files = RunDir(out)
        resumed = files.last.exists()
        if resumed:
            restore_checkpoint(files.last, cfg, model=model, optimizer=optimizer, scaler=scaler, loader=loader,
                               progress=state, device=device, fingerprint=data.fingerprint)
        step_model: nn.Module = model
        if dist.enabled:
            step_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if settings.compile and compile_step:
            step_model = torch.compile(step_model, mode=settings.compile)
        return cls(cfg=cfg, out=out, data=data, settings=settings, dist=dist,
                   amp=amp if amp is not None else autocast_context(settings.precision, device), model=model,
                   step_model=step_model, optimizer=optimizer, scaler=scaler, loader=loader, n_params=n_params,
                   state=state, log=MetricsLog(files.metrics_file, dist.is_main, state.it if resumed else None,
                                               tensorboard=cfg.run.tensorboard),
                   resumed=resumed, acc=torch.zeros(2, device=device, dtype=torch.float64),
                   first_bad=torch.full((), -1, device=device, dtype=torch.int64),
                   step_count=torch.full((), state.it, device=device, dtype=torch.int64), it_interval=state.it)

    @property
    def name(self) -> str:
        """The run directory's name, which names the run in a group."""
        return self.out.name

    @property
    def dir(self) -> RunDir:
        """The run directory's files."""
        return RunDir(self.out)

    @property
    def device(self) -> torch.device:
        """Where the run trains (``settings.device``)."""
        return self.settings.torch_device

    @property
    def precision(self) -> str:
        """The autocast precision the run trains in (``settings.precision``)."""
        return self.settings.precision

    @property
    def channels_last(self) -> bool:
        """Whether the model and batches are channels-last (``settings.channels_last``)."""
        return self.settings.channels_last

    def write_config(self) -> None:
        """``config.yaml``: the resolved config, and the settings as its ``meta`` block (main rank only)."""
        if self.dist.is_main:
            self.dir.write_config(self.cfg.to_dict() | {"meta": self.settings.meta()})

    # -- the step -------------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """Sets the learning rate of every parameter group."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        """One SGD step: the schedule's learning rate, the next batch, forward, backward, update, then the
        interval's loss and accuracy accumulated on the device (no host synchronisation)."""
        it = self.state.it
        self.set_lr(lr_at(self.cfg, it))
        x, y = self.loader.next()
        every = self.cfg.run.grad_stats_every
        if every and (it + 1) % every == 0:  # --log-grad-stats: this step runs eager on the raw model, probed
            with GradProbe(self.model) as probe:
                loss, logits = train_step(self.model, self.optimizer, self.scaler, self.amp, x, y)
            self.log.write(probe.record(it + 1))
        else:
            loss, logits = train_step(self.step_model, self.optimizer, self.scaler, self.amp, x, y)
        self.accumulate(loss, logits, y)
        self.advance(len(y))

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Device-side bookkeeping, in place and without host synchronisation (a CUDA graph can hold it)."""
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(loss), self.step_count,
                                         self.first_bad))
        self.acc[0] += loss.double() * len(y)
        self.acc[1] += (logits.argmax(1) == y).sum()
        self.step_count += 1

    def advance(self, batch: int) -> None:
        """Counts a step of ``batch`` images on the host."""
        self.images += batch
        self.state.it += 1

    def due(self) -> bool:
        """Whether the iteration just done ends a log, evaluation or checkpoint interval."""
        r, it = self.cfg.run, self.state.it
        return it == self.cfg.optim.iters or any(n and it % n == 0 for n in (r.log_every, r.eval_every,
                                                                              r.ckpt_every))

    # -- the boundary ---------------------------------------------------------------------------------------
    def boundary(self, seconds: float, elapsed: float, *, stopping: bool = False) -> dict[str, Any] | None:
        """Synchronise once (summed over ranks), check the loss, then log, evaluate and checkpoint as due.

        ``seconds``: since the last boundary; ``elapsed``: since this process started training. Returns the metrics
        record written (None when only a checkpoint was due).

        Raises:
            NonFiniteLoss: the loss became NaN/inf since the last boundary (nothing of it is saved).
        """
        cfg, it = self.cfg, self.state.it
        is_end = it == cfg.optim.iters
        do_log = is_end or (cfg.run.log_every and it % cfg.run.log_every == 0)
        do_eval = is_end or (cfg.run.eval_every and it % cfg.run.eval_every == 0)
        do_ckpt = is_end or (cfg.run.ckpt_every and it % cfg.run.ckpt_every == 0) or stopping
        totals = self._synchronise()
        self._count_steady(seconds)
        rec = self._train_record(totals, seconds, elapsed) if do_log or do_eval else None
        self.acc.zero_()
        self.images = 0
        if do_eval:
            assert rec is not None
            self._evaluate_into(rec, elapsed)
        if rec is not None:
            self.log.write(rec)
        if do_ckpt:
            self.save(RunDir.LAST, elapsed)
        self.it_interval = it
        return rec

    def _synchronise(self) -> list[float]:
        """The interval's loss sum, correct count and images, summed over ranks: the one host synchronisation of an
        interval. Raises NonFiniteLoss when any rank saw a non-finite loss."""
        totals = all_reduce_sum(torch.cat([self.acc, self.acc.new_tensor([self.images]),
                                           (self.first_bad >= 0).double()[None]]), self.dist).tolist()
        if totals[3] > 0:
            it = self.state.it
            bad = int(self.first_bad.item()) if self.first_bad.item() >= 0 else it - 1
            kept = (f"the last good checkpoint is kept in {self.dir.last}" if self.dir.last.is_file()
                    else f"no checkpoint was written yet, so {self.out} holds nothing to resume")
            raise NonFiniteLoss(f"the training loss became non-finite at iteration {bad + 1} (lr "
                                f"{lr_at(self.cfg, bad):g}); {kept}; lower --lr or check the data")
        return totals[:3]

    def _count_steady(self, seconds: float) -> None:
        """Adds the interval to the steady-state rate, except this process's first (warm-up, compilation)."""
        if self.it_interval > self.state.start_it:
            self.state.steady["images"] += (self.state.it - self.it_interval) * self.cfg.optim.batch_size
            self.state.steady["seconds"] += seconds

    def _train_record(self, totals: list[float], seconds: float, elapsed: float) -> dict[str, Any]:
        """The "train" line of metrics.jsonl for the interval that just ended."""
        cfg, it = self.cfg, self.state.it
        loss_sum, correct, images = totals
        return {"kind": "train", "iter": it, "epoch": self.loader.epoch, "lr": lr_at(cfg, it - 1),
                "train_loss": loss_sum / max(images, 1), "train_top1": 100.0 * correct / max(images, 1),
                "images_per_second": (it - self.it_interval) * cfg.optim.batch_size / max(seconds, 1e-9),
                "time": self.state.wall_before + elapsed}

    def _evaluate_into(self, rec: dict[str, Any], elapsed: float) -> None:
        """Test (and validation) evaluation into ``rec``, now an "eval" line; tracks the best, writes best.pt when
        the validation top-1 improves."""
        it, best = self.state.it, self.state.best
        rec["kind"] = "eval"
        test = self.evaluate("test")
        rec.update(test_top1=test.top1, test_top5=test.top5, test_loss=test.loss)
        if test.top1 > best["test_top1"]:
            best.update(test_top1=test.top1, test_top5=test.top5, test_iter=it)
        if self.data.val is not None:
            val = self.evaluate("val")
            rec.update(val_top1=val.top1, val_top5=val.top5, val_loss=val.loss)
            if val.top1 > best["val_top1"]:
                best.update(val_top1=val.top1, val_iter=it)
                self.save(RunDir.BEST, elapsed)
        self.state.last_eval = rec

    def evaluate(self, split: str) -> Scores:
        """Top-1, top-5 and loss of the run's model on ``split`` ("test" or "val"), as training evaluates."""
        return eval_split(self.model, self.data.split(split), self.data, self.cfg, self.device, self.channels_last,
                          self.amp, self.dist)

    # -- files ----------------------------------------------------------------------------------------------
    def checkpoint_state(self, wall: float) -> dict[str, Any]:
        """Everything ``last.pt`` holds: weights, optimizer, data position, RNG, progress, the config."""
        cfg, dev = self.cfg, self.device
        return {"version": CHECKPOINT_VERSION, **self.state.state_dict(wall), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "scheduler": {"milestones": list(cfg.optim.milestones), "gamma": cfg.optim.gamma,
                              "lr": lr_at(cfg, self.state.it)},
                "data": self.loader.state_dict(), "data_fingerprint": self.data.fingerprint,
                "precision": self.precision,  # what evaluating these weights again must compute in
                "classes": self.data.classes,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                "config": cfg.to_dict()}

    def save(self, name: str, elapsed: float) -> None:
        """Atomically writes ``out/name`` (main rank only); ``elapsed``: seconds of this process so far."""
        if self.dist.is_main:
            save_checkpoint(self.out / name, self.checkpoint_state(self.state.wall_before + elapsed))

    def summary(self, elapsed: float) -> dict[str, Any]:
        """``summary.json``'s record (engine/records.py ``summary_record``): final test accuracy, best-on-test (the
        paper's reporting), validation-selected (``best.pt`` evaluated on the test set), costs."""
        cfg, data, st = self.cfg, self.data, self.state
        if not st.last_eval:  # resumed from a checkpoint written at the last iteration: evaluate the final weights
            test = self.evaluate("test")
            st.last_eval = {"test_top1": test.top1, "test_top5": test.top5, "test_loss": test.loss}
        selected = None
        if data.val is not None and self.dir.best.exists():
            model = open_checkpoint(self.dir.best).model(len(data.classes))
            model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            selected = eval_split(model, data.test, data, cfg, self.device, self.channels_last, self.amp, self.dist)
        rate = st.steady["images"] / st.steady["seconds"] if st.steady["seconds"] else None
        return summary_record(cfg, data, params=self.n_params, final=st.last_eval, best=st.best, selected=selected,
                              wall_seconds=st.wall_before + elapsed, images_per_second=rate,
                              world_size=self.dist.world_size)

    def finish(self, elapsed: float) -> dict[str, Any]:
        """The finished run's summary, written to ``summary.json`` by the main rank; ``elapsed``: seconds this
        process trained."""
        summary = self.summary(elapsed)
        if self.dist.is_main:
            self.dir.write_summary(summary)
        return summary
