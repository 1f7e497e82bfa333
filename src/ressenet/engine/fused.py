"""Fused training: several runs of one depth (models x seeds) trained together in one process.

``ressenet train --model resnet20,se_resnet20,res_se_net20 --seed 1,2,3 --out DIR`` trains the nine runs
``DIR/<model>-s<seed>`` at once. Each member is an ordinary run: its own initialisation (``torch.manual_seed(seed)``
before the model is built, as a separate run), its own data order and augmentation (a
:class:`~ressenet.data.TrainLoader` with its seed; the members share one stored copy of the pixels), its own
optimizer, and its own run directory with the usual files (``config.yaml`` with ``meta.fused_with``,
``metrics.jsonl``, ``last.pt``, ``summary.json``). ``ressenet eval``, resume and the report treat it as any run.

Three mechanisms run a group (``--fused-mechanism``; auto picks by device, from benchmarks/fused_throughput.py):

* ``sequential`` (the CPU's): the members step one after another with the single-run step
  (:func:`ressenet.engine.run.train_step`), so every member is bit-identical to its separate run. On the CPU,
  merging the members into one network (``grouped`` below) trained slower than this and held every member's
  activations at once (BENCHMARKS.md, "Fused training").
* ``graphs`` (CUDA): each member's whole step (forward, loss, backward, SGD update, loss/accuracy accumulators) is
  captured once in a CUDA graph, and every iteration replays the members' graphs on their own CUDA streams. One
  member at batch 128 leaves an H200 mostly idle (kernels of a few microseconds, launch-bound); replayed graphs
  remove the launch cost and members' kernels run side by side. The arithmetic is the eager step's, with the same
  kernels (separate CUDA runs are torch.compile'd by default, so they agree with fused ones statistically, not to
  the bit). The learning rate is a float baked into the graph, so a member's graph is captured again at each
  milestone; the first ``WARMUP_STEPS`` steps run eagerly (cuDNN's algorithm search and the optimizer's momentum
  buffers must exist before capture).
* ``grouped`` (any device; HFTA's horizontal fusion, models/fused.py): the members become one network whose
  convolutions are grouped over the members, and one SGD optimizer steps it. The members' own models and optimizers
  stay the record: the fused copy is built from them at the first step and written back into them before every
  boundary (log, evaluation, checkpoint), so evaluation, checkpoints and resume are a separate run's. Equal to
  separate runs up to summation order (grouped kernels add in another order; tests/test_fused.py). Members resumed
  at different iterations take single-run steps until level. It needs fp32 or bf16 (one loss scaler for all
  members would couple them) and no ``--log-grad-stats``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ressenet.engine.config import FUSED_MECHANISMS, Config
from ressenet.engine.lock import LockHeld, RunLock, describe
from ressenet.engine.records import Progress
from ressenet.engine.run import Run, lr_at, make_optimizer, train_step
from ressenet.engine.rundir import RunDir, prepare_run_dir
from ressenet.engine.runtime import Sequential, Stepper, compile_choice, finish, prepare_device, run_loop
from ressenet.engine.setup import load_data, resolve_device, resolve_precision
from ressenet.errors import RessenetError

__all__ = ["FusedGroup", "STEPPERS", "train_fused", "fused_configs", "resolve_mechanism"]

WARMUP_STEPS = 3  # eager steps before a member's first capture (cuDNN autotuning, momentum buffers)
# Keys in which the members of one group may differ; everything else (data, protocol, precision, device) is shared.
MEMBER_KEYS = ("model.name", "run.seed", "run.out")


def fused_configs(base: dict[str, Any], models: list[str], seeds: list[int], out: str,
                  config_file: str | None = None, name_template: str | None = None) -> list[Config]:
    """The members' configs: the product of ``models`` and ``seeds``, each in ``out/<model>-s<seed>``.

    Every name is checked before anything touches the disk. ``base`` holds the other overrides ({"section.key": v}).
    ``name_template`` (e.g. a grid's ``"{model}-cifar10-s{seed}"``) replaces the member directories' names.
    """
    template = name_template or "{model}-s{seed}"
    import string

    try:  # only the two plain fields: str.format would also run {seed.__class__} and fail on {x}
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:
        fields = [("", None, None)]
    if "{model}" not in template or "{seed}" not in template or "/" in template or template.startswith(".") or \
            any(f not in ("model", "seed") or spec or conv for f, spec, conv in fields):
        raise RessenetError(f"--member-name {template!r} must contain {{model}} and {{seed}}, no other {{...}} field "
                            f"and no '/', e.g. '{{model}}-cifar10-s{{seed}}'")
    from ressenet.engine.config import load_config
    from ressenet.models import create_model, is_model, list_models, model_info
    from ressenet.names import suggest

    for m in models:
        if not is_model(m):
            raise RessenetError(f"unknown model {m!r} in --model; {suggest(m, list_models())}`ressenet models` lists "
                                f"them")
    if len(set(models)) != len(models) or len(set(seeds)) != len(seeds):
        raise RessenetError(f"--model {','.join(models)} --seed {','.join(map(str, seeds))} repeats a member; "
                            f"list each model and seed once")
    depths = {m: (info.depth if (info := model_info(m)) else create_model(m).depth) for m in models}
    if len(set(depths.values())) > 1:
        raise RessenetError(f"fused members must share one depth, got {depths}; run one command per depth")
    cfgs = []
    for m in models:
        for s in seeds:
            cfgs.append(load_config(config_file, {**base, "model.name": m, "run.seed": s,
                                                  "run.out": str(Path(out) / template.format(model=m, seed=s))}
                                    ).validate())
    return cfgs


def resolve_mechanism(name: str, device: torch.device) -> str:
    if name not in FUSED_MECHANISMS:
        raise RessenetError(f"--fused-mechanism {name!r} is not one of {', '.join(FUSED_MECHANISMS)}")
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
class _Graph:
    """A member's CUDA graph state (mechanism ``graphs``)."""

    stream: Any
    eager_left: int = WARMUP_STEPS
    graph: Any = None
    lr: float | None = None
    pool: Any = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None


class Graphs(Stepper):
    """Mechanism ``graphs``: each member's step replayed from a CUDA graph on its own stream (module docstring)."""

    compiles = False  # a captured graph already removes the launch cost torch.compile would
    grad_stats = False  # the probed step is eager; a replayed graph cannot run it

    @staticmethod
    def refuse(precision: str) -> str | None:
        if precision == "fp16":
            return ("--fused-mechanism graphs trains in fp32 or bf16 (fp16's loss scaling synchronises with the host "
                    "every step); use --precision bf16")
        return None

    @staticmethod
    def amp(precision: str, device: torch.device) -> Any:
        # Autocast's weight cache must be off while capturing CUDA graphs (PyTorch's graph docs).
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if precision == "bf16" else None

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        super().__init__(runs)
        self.graphs: dict[str, _Graph] = {}
        for r in runs:
            # parallel_streams=False (benchmarks only) replays every graph on one stream: no overlap.
            shared = next(iter(self.graphs.values())).stream if self.graphs and not parallel_streams else None
            self.graphs[r.name] = _Graph(shared or torch.cuda.Stream(r.device))

    def step(self) -> list[Run]:
        stepped = self.active()
        for m in stepped:
            self._step_graph(m, self.graphs[m.name])
        return stepped

    def _step_graph(self, m: Run, g: _Graph) -> None:
        lr = lr_at(m.cfg, m.state.it)
        with torch.cuda.stream(g.stream):
            x, y = m.loader.next()
            if g.eager_left > 0:
                g.eager_left -= 1
                m.set_lr(lr)
                loss, logits = train_step(m.model, m.optimizer, m.scaler, m.amp, x, y)
                m.accumulate(loss, logits, y)
            else:
                if g.graph is None or g.lr != lr:
                    self._capture(m, g, lr, x, y)
                g.x.copy_(x)  # type: ignore[union-attr]
                g.y.copy_(y)  # type: ignore[union-attr]
                g.graph.replay()
        m.advance(len(y))

    def _capture(self, m: Run, g: _Graph, lr: float, x: torch.Tensor, y: torch.Tensor) -> None:
        """Records the member's step with ``lr`` (recording runs nothing: the replay after it does the step)."""
        m.set_lr(lr)
        if g.x is None:
            g.x, g.y = torch.empty_like(x), torch.empty_like(y)
        if g.graph is not None:
            torch.cuda.synchronize(m.device)  # the old graph may still be replaying
        # The new graph shares the old one's memory pool (it never replays again). The old graph must stay alive
        # until the new capture has begun: destroying it first releases the pool, and capturing into a released
        # pool fails an internal assertion of PyTorch's allocator (seen on an H200, torch 2.11).
        old = g.graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=g.pool, stream=g.stream):
            loss, logits = train_step(m.model, m.optimizer, m.scaler, m.amp, g.x, g.y)
            m.accumulate(loss, logits, g.y)
        g.graph, g.lr, g.pool = graph, lr, graph.pool()
        del old

    def release(self) -> None:
        if not self.runs:
            return
        cur = torch.cuda.current_stream(self.runs[0].device)
        for g in self.graphs.values():
            if g.stream is not cur:
                g.stream.wait_stream(cur)


@dataclass
class _Network:
    """Mechanism ``grouped``: the fused network of ``members`` and its one SGD optimizer."""

    members: list[Run]
    net: Any  # models.fused.FusedResNet
    step_loss: Any  # (x, y) -> (each member's mean loss (N,), logits (N, B, K)); maybe compiled
    optimizer: torch.optim.Optimizer
    dirty: bool = False  # stepped since the members' models were last written

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @classmethod
    def build(cls, members: list[Run], compile_mode: str | None) -> _Network:
        """Fuses the members' current weights, buffers and momentum (resumed members carry theirs)."""
        from ressenet.models.fused import FusedResNet

        its = {m.name: m.state.it for m in members}
        assert len(set(its.values())) == 1, f"members at different iterations: {its}"
        m0 = members[0]
        net = FusedResNet([m.model for m in members])  # fusable: checked when the group was made
        net.to(m0.device, memory_format=torch.channels_last if m0.channels_last else torch.contiguous_format)
        optimizer = make_optimizer(net.parameters(), m0.cfg, m0.device)  # elementwise: each member's own update
        buffers = [_momentum(m) for m in members]
        if any(buffers):
            for k in net.param_keys:
                fused = net.stack(k, [b.get(k) for b in buffers])
                p = net.tensor(k)
                optimizer.state[p]["momentum_buffer"] = fused.to(memory_format=torch.channels_last) \
                    if m0.channels_last and fused.dim() == 4 else fused

        def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = net(x)  # (N, B, K)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
            return losses, logits

        # The loss inside the compiled region: its forward and backward are captured with the network's.
        compiled = torch.compile(step_loss, mode=compile_mode) if compile_mode else step_loss
        return cls(members, net, compiled, optimizer)

    def write_back(self) -> None:
        """Copies each member's part of the weights, buffers and momentum into its own model and optimizer."""
        if not self.dirty:
            return
        self.net.copy_to([m.model for m in self.members])
        for i, m in enumerate(self.members):
            for k, p in m.model.named_parameters():
                fused = self.optimizer.state.get(self.net.tensor(k), {}).get("momentum_buffer")
                if fused is not None:
                    m.optimizer.state[p]["momentum_buffer"] = \
                        self.net.member_tensor(fused, k, i).clone(memory_format=torch.preserve_format)
        self.dirty = False


class Grouped(Stepper):
    """Mechanism ``grouped``: the active members as one network with grouped convolutions (module docstring)."""

    compiles = True  # the fused network, not each member
    grad_stats = False  # the probed step is a member's own eager step

    @staticmethod
    def refuse(precision: str) -> str | None:
        if precision == "fp16":
            return ("--fused-mechanism grouped trains in fp32 or bf16 (one fp16 loss scaler would skip every "
                    "member's step when one member overflows); use --precision bf16")
        return None

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        super().__init__(runs)
        self.compile_mode = compile_mode
        self.network: _Network | None = None  # the fused network of the members that stepped last

    def step(self) -> list[Run]:
        members = self.active()
        if not members:
            return members
        low = min(m.state.it for m in members)
        if any(m.state.it != low for m in members):
            # Members resumed from checkpoints of different iterations (a kill between two members' saves): the
            # ones behind take single-run steps until all are level, then the group fuses.
            if self.network is not None:
                self.network.write_back()
                self.network = None
            behind = [m for m in members if m.state.it == low]
            for m in behind:
                m.step()
            return behind
        g = self.network
        if g is None or g.names != [m.name for m in members]:
            if g is not None:
                g.write_back()  # (already done at the boundary that changed the set; harmless)
            g = self.network = _Network.build(members, self.compile_mode)
        xs, ys = zip(*(m.loader.next() for m in members))
        lr = lr_at(members[0].cfg, members[0].state.it)
        for group in g.optimizer.param_groups:
            group["lr"] = lr
        for m in members:
            m.set_lr(lr)  # the members' own optimizers (what last.pt records) show the lr as a separate run's do
        x = torch.cat(xs, dim=1)
        if members[0].channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.stack(ys)  # (N, B)
        with members[0].amp:
            losses, logits = g.step_loss(x, y)
        g.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # each member's weights get exactly its own loss's gradient
        g.optimizer.step()
        g.dirty = True
        losses, logits = losses.detach(), logits.detach()
        for i, m in enumerate(members):
            m.accumulate(losses[i], logits[i], ys[i])
            m.advance(len(ys[i]))
        return members

    def sync(self) -> None:
        if self.network is not None:
            self.network.write_back()
        super().sync()


# --fused-mechanism -> its stepper (engine/runtime.py drives it); "auto" resolves first (resolve_mechanism).
STEPPERS: dict[str, type[Stepper]] = {"sequential": Sequential, "graphs": Graphs, "grouped": Grouped}


def _check_fusable(cfgs: list[Config]) -> None:
    """Mechanism grouped: the members' networks fuse into one (built on the meta device: no memory, no time)."""
    from ressenet.engine.setup import build_model
    from ressenet.models.fused import FusedResNet

    with torch.device("meta"):
        try:
            FusedResNet([build_model(c, c.model.num_classes or 10) for c in cfgs])
        except ValueError as e:
            raise RessenetError(f"--fused-mechanism grouped cannot fuse "
                                f"{', '.join(sorted({c.model.name for c in cfgs}))}: {e}; use --fused-mechanism "
                                f"sequential, or one command per block type") from None


def _momentum(m: Run) -> dict[str, torch.Tensor]:
    """A member's SGD momentum buffers by parameter name (empty before its first step)."""
    return {k: buf for k, p in m.model.named_parameters()
            if (buf := m.optimizer.state.get(p, {}).get("momentum_buffer")) is not None}


class FusedGroup:
    """The members (engine/run.py ``Run`` objects) of one fused job, claimed and built; ``stepper`` (from
    ``STEPPERS``) advances them, and :meth:`step`, :meth:`sync` and :meth:`release` are its."""

    def __init__(self, cfgs: list[Config], *, mechanism: str = "auto", overwrite: bool = False,
                 data: dict[str, Any] | None = None, parallel_streams: bool = True) -> None:
        if not cfgs:
            raise RessenetError("a fused group needs at least one member")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RessenetError("fused training runs in one process; launch it without torchrun")
        shared = _shared_part(cfgs[0])
        for c in cfgs[1:]:
            if _shared_part(c) != shared:
                other = _shared_part(c)
                diff = sorted(f"{s}.{k}" for s in shared for k in shared[s] if shared[s][k] != other[s][k])
                raise RessenetError(f"fused members differ in {', '.join(diff)}; only the model and the seed may "
                                    f"differ within one command")
        cfg0 = cfgs[0]
        self.device = resolve_device(cfg0.run.device)
        self.mechanism = resolve_mechanism(mechanism, self.device)
        kind = STEPPERS[self.mechanism]
        # A group resumed from its members' checkpoints keeps what they chose when they started (one member's
        # record stands for all: they started together, or alone with the same auto choices on the same machine).
        self.recorded = next((r for r in (RunDir(c.run.out).recorded_choices() for c in cfgs) if r), {})
        self.precision = resolve_precision(cfg0.run.precision, self.device, self.recorded.get("precision"))
        if not kind.grad_stats and cfg0.run.grad_stats_every:
            raise RessenetError(f"--log-grad-stats probes each member's own eager step, which --fused-mechanism "
                                f"{self.mechanism} replaces; use --fused-mechanism sequential, or drop --log-grad-stats")
        if (why := kind.refuse(self.precision)) is not None:
            raise RessenetError(why)
        if self.mechanism == "grouped":
            _check_fusable(cfgs)  # before any directory is touched
        names = [Path(c.run.out).name for c in cfgs]
        self.finished: dict[str, dict[str, Any]] = {}
        self.locked: dict[str, str] = {}  # member -> the runner that holds it
        self.locks: list[RunLock] = []
        pending: list[tuple[Config, Path]] = []
        for c in cfgs:
            lock = RunLock(c.run.out)
            try:
                lock.acquire()  # one runner per run directory: a member another runner holds is skipped
            except LockHeld as e:
                self.locked[Path(c.run.out).name] = describe(e.holder)
                continue
            self.locks.append(lock)
            out, done = prepare_run_dir(c, overwrite, True)
            if done is not None:
                self.finished[out.name] = done
            else:
                pending.append((c, out))
        self.members: list[Run] = []
        self.notes: list[str] = []  # what to tell the user before training (the compile decision)
        self.stepper: Stepper = kind([])
        if not pending:
            return
        try:
            self._build(kind, pending, names, data, parallel_streams)
        except BaseException:
            self.release_locks()
            raise

    def _build(self, kind: type[Stepper], pending: list[tuple[Config, Path]], names: list[str],
               data: dict[str, Any] | None, parallel_streams: bool) -> None:
        cfg0 = pending[0][0]
        prepare_device(self.device)
        self.data = data if data is not None else load_data(cfg0)
        compile_mode, self.notes = compile_choice(cfg0, self.device, self.precision, self.recorded.get("compile")) \
            if kind.compiles else (None, [])
        amp = kind.amp(self.precision, self.device)
        for c, out in pending:
            first = self.members[0].loader if self.members else None
            run = Run.build(c, out, self.data, self.device, share_pixels_with=first, amp=amp)
            run.write_config(compile=compile_mode or False, fused_with=names, fused_mechanism=self.mechanism)
            self.members.append(run)
        self.stepper = kind(self.members, compile_mode=compile_mode, parallel_streams=parallel_streams)
        self.release()  # members' streams see the weights and state built on the default stream

    # -- the stepper's ------------------------------------------------------------------------------------------
    @property
    def failed(self) -> dict[str, Any]:
        return self.stepper.failed

    @property
    def grouped(self) -> _Network | None:
        """Mechanism grouped: the fused network of the members that stepped last."""
        return getattr(self.stepper, "network", None)

    @property
    def active(self) -> list[Run]:
        return self.stepper.active()

    def step(self) -> list[Run]:
        return self.stepper.step()

    def sync(self) -> None:
        self.stepper.sync()

    def release(self) -> None:
        self.stepper.release()

    def release_locks(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []


def train_fused(cfgs: list[Config], *, overwrite: bool = False, mechanism: str = "auto") -> list[dict[str, Any]]:
    """Trains the members of ``cfgs`` together; returns their summaries (finished ones included, not retrained).

    SIGINT/SIGTERM finish the current step, checkpoint every member and exit; the same command resumes.

    Raises:
        RessenetError: bad group, or a member whose loss became non-finite (the others still finish first).
    """
    group = FusedGroup(cfgs, mechanism=mechanism, overwrite=overwrite)
    try:
        summaries = dict(group.finished)
        parent = Path(cfgs[0].run.out).parent
        for name, holder in group.locked.items():
            print(f"{parent / name} is being trained by {holder}; skipped here", file=sys.stderr)
        for name in group.finished:
            print(f"{parent / name} already finished; not retrained")
        if group.members:
            progress = Progress(cfgs[0].run.progress, cfgs[0].optim.iters,
                                min(m.state.it for m in group.members), True, group=True)
            start = sorted({m.state.it for m in group.members})
            progress.message(f"fused training of {len(group.members)} members "
                             f"({', '.join(m.name for m in group.members)}) on {group.device}, mechanism "
                             f"{group.mechanism}, {group.precision}; from iteration {'/'.join(map(str, start))}")
            for note in group.notes:
                progress.message(note)
            summaries.update(finish(group.stepper, run_loop(group.stepper, progress)))
        return [summaries[Path(c.run.out).name] for c in cfgs if Path(c.run.out).name in summaries]
    finally:
        group.release_locks()
