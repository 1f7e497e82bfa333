"""One training run's objects and bookkeeping, shared by the single-run loop (engine/train.py) and fused training
(engine/fused.py): build or resume, one SGD step, the boundary work (log, evaluate, checkpoint), the summary.

Everything a checkpoint restores lives here, so a run trained alone and the same run trained as a fused member write
the same files in the same format.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ressenet.engine.checkpoint import open_checkpoint, save_checkpoint
from ressenet.engine.config import Config
from ressenet.engine.distributed import DistInfo, all_reduce_sum
from ressenet.engine.evaluation import eval_split
from ressenet.engine.records import MetricsLog
from ressenet.engine.rundir import RunDir
from ressenet.engine.setup import (autocast_context, build_model, resolve_channels_last,
                                   resolve_precision, versions)
from ressenet.errors import RessenetError

__all__ = ["CHECKPOINT_VERSION", "TrainState", "Run", "NonFiniteLoss", "lr_at", "train_step", "make_optimizer"]

CHECKPOINT_VERSION = 1


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
    """One SGD step on (x, y); returns the detached (loss, logits). The optimizer's lr must already be set."""
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
        return {"iter": self.it, "best": dict(self.best), "wall_seconds": wall, "steady": dict(self.steady)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.it = self.start_it = int(state["iter"])
        self.best, self.steady = dict(state["best"]), dict(state["steady"])
        self.wall_before = float(state["wall_seconds"])


@dataclass
class Run:
    """One run: model, optimizer, data stream, device-side accumulators, its directory's log; see :meth:`build`."""

    cfg: Config
    out: Path
    data: dict[str, Any]
    device: torch.device
    dist: DistInfo
    precision: str
    channels_last: bool
    amp: Any
    model: nn.Module  # the raw model: its state_dict is the run's
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: Any
    n_params: int
    state: TrainState
    log: MetricsLog
    resumed: bool
    step_model: nn.Module | None = None  # what the step calls: the model, compiled and/or DDP-wrapped
    acc: torch.Tensor = field(default=None)  # type: ignore[assignment]  # loss sum, correct (float64)
    first_bad: torch.Tensor = field(default=None)  # type: ignore[assignment]  # first non-finite iteration or -1
    step_count: torch.Tensor = field(default=None)  # type: ignore[assignment]  # device-side copy of state.it
    images: int = 0  # seen on this rank since the last boundary
    it_interval: int = 0  # iteration of the last boundary

    @classmethod
    def build(cls, cfg: Config, out: Path, data: dict[str, Any], device: torch.device, dist: DistInfo | None = None,
              *, share_pixels_with: Any = None, amp: Any = None) -> Run:
        """The run's objects as a separate run of ``cfg`` builds them (``torch.manual_seed(seed)`` before the model),
        resumed from ``out/last.pt`` when present."""
        from ressenet.data import TrainLoader
        from ressenet.models import count_params

        dist = dist or DistInfo()
        kept = RunDir(out).recorded_choices()  # a resumed run keeps what auto chose when it started
        precision = resolve_precision(cfg.run.precision, device, kept.get("precision"))
        channels_last = resolve_channels_last(cfg.run.channels_last, device, kept.get("channels_last"))
        torch.manual_seed(cfg.run.seed)  # model init identical on every rank (DDP also broadcasts rank 0's)
        model = build_model(cfg, len(data["train"].classes))
        n_params = count_params(model)
        if cfg.run.sync_bn and device.type != "cuda":
            raise RessenetError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernels); drop --sync-bn")
        if cfg.run.sync_bn and dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        optimizer = make_optimizer(model.parameters(), cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        loader = TrainLoader(data["train"], cfg.optim.batch_size, mean=data["mean"], std=data["std"],
                             seed=cfg.run.seed, device=device, augment=cfg.data.augment, rank=dist.rank,
                             world_size=dist.world_size, channels_last=channels_last,
                             share_pixels_with=share_pixels_with)
        state = TrainState()
        files = RunDir(out)
        resumed = files.last.exists()
        if resumed:
            _restore(files.last, cfg, model, optimizer, scaler, loader, state, device, data.get("fingerprint"))
        run = cls(cfg=cfg, out=out, data=data, device=device, dist=dist, precision=precision,
                  channels_last=channels_last, amp=amp if amp is not None else autocast_context(precision, device),
                  model=model, optimizer=optimizer, scaler=scaler, loader=loader, n_params=n_params, state=state,
                  log=MetricsLog(files.metrics_file, dist.is_main, state.it if resumed else None,
                                 tensorboard=cfg.run.tensorboard),
                  resumed=resumed, step_model=model, it_interval=state.it)
        run.acc = torch.zeros(2, device=device, dtype=torch.float64)
        run.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        run.step_count = torch.full((), state.it, device=device, dtype=torch.int64)
        return run

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def dir(self) -> RunDir:
        return RunDir(self.out)

    def write_config(self, **meta: Any) -> None:
        """``config.yaml``: the resolved config plus ``meta`` (versions, device, what auto chose)."""
        if self.dist.is_main:
            tree = self.cfg.to_dict()
            tree["meta"] = versions(self.device) | {"precision": self.precision, "channels_last": self.channels_last,
                                                    "world_size": self.dist.world_size,
                                                    "data": self.data["train"].description,
                                                    "data_fingerprint": self.data.get("fingerprint"),
                                                    # the input normalisation, which `ressenet export` records
                                                    "mean": [float(v) for v in self.data["mean"]],
                                                    "std": [float(v) for v in self.data["std"]]} | meta
            self.dir.write_config(tree)

    # -- the step -------------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        """One SGD step at the schedule's learning rate on the next batch."""
        self.set_lr(lr_at(self.cfg, self.state.it))
        x, y = self.loader.next()
        every = self.cfg.run.grad_stats_every
        if every and (self.state.it + 1) % every == 0:
            loss, logits = self._probed_step(x, y)
        else:
            loss, logits = train_step(self.step_model, self.optimizer, self.scaler, self.amp, x, y)
        self.accumulate(loss, logits, y)
        self.advance(len(y))

    def _probed_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same SGD step, eager on the raw model, recording where the gradient flows (``--log-grad-stats``):
        the norm reaching each bridge block's input through its shortcut and through its residual branch, and
        every weight's gradient norm. Written as a "grads" line of metrics.jsonl."""
        blocks = {name: m for name, m in self.model.named_modules() if getattr(m, "is_bridge", False)
                  and hasattr(m, "grad_probe")}
        for m in blocks.values():
            m.grad_probe = {}
        try:
            loss, logits = train_step(self.model, self.optimizer, self.scaler, self.amp, x, y)
        finally:
            probes = {name: m.grad_probe or {} for name, m in blocks.items()}
            for m in blocks.values():
                m.grad_probe = None
        weights = {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None and p.dim() > 1}
        # Weight-gradient norms are read after the step: SGD leaves .grad as the backward wrote it.
        names = list(weights)
        norms = torch.stack([weights[n].float().norm() for n in names]).tolist() if names else []
        rec = {"kind": "grads", "iter": self.state.it + 1,
               "bridge": {b: float(p["shortcut"]) for b, p in probes.items() if "shortcut" in p},
               "residual": {b: float(p["residual"]) for b, p in probes.items() if "residual" in p},
               "weights": dict(zip(names, norms))}
        self.log.write(rec)
        return loss, logits

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Device-side bookkeeping, in place and without host synchronisation (a CUDA graph can hold it)."""
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~torch.isfinite(loss), self.step_count,
                                         self.first_bad))
        self.acc[0] += loss.double() * len(y)
        self.acc[1] += (logits.argmax(1) == y).sum()
        self.step_count += 1

    def advance(self, batch: int) -> None:
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
        rec.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
        if test["top1"] > best["test_top1"]:
            best.update(test_top1=test["top1"], test_top5=test["top5"], test_iter=it)
        if self.data["val"] is not None:
            val = self.evaluate("val")
            rec.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
            if val["top1"] > best["val_top1"]:
                best.update(val_top1=val["top1"], val_iter=it)
                self.save(RunDir.BEST, elapsed)
        self.state.last_eval = rec

    def evaluate(self, split: str) -> dict[str, float]:
        return eval_split(self.model, self.data[split], self.data, self.cfg, self.device, self.channels_last,
                          self.amp, self.dist)

    # -- files ----------------------------------------------------------------------------------------------
    def checkpoint_state(self, wall: float) -> dict[str, Any]:
        """Everything ``last.pt`` holds: weights, optimizer, data position, RNG, progress, the config."""
        cfg, dev = self.cfg, self.device
        return {"version": CHECKPOINT_VERSION, **self.state.state_dict(wall), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "scheduler": {"milestones": list(cfg.optim.milestones), "gamma": cfg.optim.gamma,
                              "lr": lr_at(cfg, self.state.it)},
                "data": self.loader.state_dict(), "data_fingerprint": self.data.get("fingerprint"),
                "precision": self.precision,  # what evaluating these weights again must compute in
                "classes": list(self.data["train"].classes),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                "config": cfg.to_dict()}

    def save(self, name: str, elapsed: float) -> None:
        """Atomically writes ``out/name`` (main rank only); ``elapsed``: seconds of this process so far."""
        if self.dist.is_main:
            save_checkpoint(self.out / name, self.checkpoint_state(self.state.wall_before + elapsed))

    def summary(self, elapsed: float) -> dict[str, Any]:
        """``summary.json``: final test accuracy, best-on-test (the paper's reporting), validation-selected, costs."""
        cfg, data, best, st = self.cfg, self.data, self.state.best, self.state
        if not st.last_eval:  # resumed from a checkpoint written at the last iteration: evaluate the final weights
            test = self.evaluate("test")
            st.last_eval = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
        f = st.last_eval
        selected: dict[str, Any] = {"selected_test_top1": None, "selected_test_top5": None}
        if data["val"] is not None and self.dir.best.exists():
            model = open_checkpoint(self.dir.best).model(len(data["train"].classes))
            model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            sel = eval_split(model, data["test"], data, cfg, self.device, self.channels_last, self.amp, self.dist)
            selected = {"selected_test_top1": sel["top1"], "selected_test_top5": sel["top5"]}
        train_ds = data["train"]
        return {
            "model": cfg.model.name, "dataset": cfg.data.dataset,
            "data": {"source": train_ds.source, "description": train_ds.description, "lossless": train_ds.lossless,
                     "fingerprint": data.get("fingerprint"),
                     "num_classes": len(train_ds.classes), "classes": list(train_ds.classes),
                     "train_size": len(train_ds), "test_size": len(data["test"]),
                     "val_size": len(data["val"]) if data["val"] is not None else 0},
            "seed": cfg.run.seed, "iters": cfg.optim.iters, "params": self.n_params,
            "test_top1": f["test_top1"], "test_top5": f["test_top5"], "test_loss": f["test_loss"],
            "best_test_top1": max(best["test_top1"], f["test_top1"]),
            "best_test_top5": best["test_top5"] if best["test_top1"] >= f["test_top1"] else f["test_top5"],
            "best_test_iter": best["test_iter"],
            "best_test_note": "selected on the test set, as the paper's code reports: optimistic",
            "val_top1": f.get("val_top1"),
            "best_val_top1": best["val_top1"] if best["val_iter"] is not None else None,
            "best_val_iter": best["val_iter"], **selected,
            "wall_seconds": st.wall_before + elapsed,
            "train_images_per_second": st.steady["images"] / st.steady["seconds"] if st.steady["seconds"] else None,
            "world_size": self.dist.world_size, "config": cfg.to_dict(),
        }


_CHECKPOINT_KEYS = ("iter", "model", "optimizer", "scaler", "data", "rng", "best", "wall_seconds", "steady", "config")


def _restore(path: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, loader: Any, state: TrainState, device: torch.device,
             fingerprint: str | None) -> None:
    """Loads ``last.pt`` into the live objects, treating the file as data: its own config must be the run's (a
    checkpoint copied in from another run is refused, not resumed under the wrong seed or lr), its keys complete,
    its iteration within the run, its weights this model's. Every refusal is one line naming the file."""
    from ressenet.engine.config import diff_configs

    fix = f"delete {path} (or pass --overwrite) to start this run again"
    opened = open_checkpoint(path, fix=fix)
    ckpt = opened.state
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise RessenetError(f"{path} lacks {', '.join(missing)}: not a checkpoint of ressenet train; {fix}")
    changed = diff_configs(opened.config.to_dict(), cfg.to_dict())
    if changed:
        shown = ", ".join(f"{k}: {_dotted(ckpt['config'], k)!r} in the checkpoint, {_dotted(cfg.to_dict(), k)!r} "
                          f"here" for k in changed[:3])
        raise RessenetError(f"{path} belongs to another run ({shown}); {fix}")
    recorded = ckpt.get("data_fingerprint")
    if recorded is not None and fingerprint is not None and recorded != fingerprint:
        raise RessenetError(f"{path} was trained on other data (fingerprint {recorded}, the data loaded now is "
                            f"{fingerprint}); point --data-root at the data it was trained on, or {fix}")
    it = ckpt["iter"]
    if not isinstance(it, int) or not 0 <= it <= cfg.optim.iters:
        raise RessenetError(f"{path} is at iteration {it!r}, outside this run's 0..{cfg.optim.iters}; {fix}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        state.load_state_dict(ckpt)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RessenetError(f"{path} does not fit this run ({first}); {fix}") from None


def _dotted(tree: dict[str, Any], key: str) -> Any:
    section, _, k = key.partition(".")
    sec = tree.get(section)
    return sec.get(k) if isinstance(sec, dict) else None

