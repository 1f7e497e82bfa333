"""How a fused group steps its members, by ``--fused-mechanism`` (the table ``STEPPERS``): ``sequential`` (each
member's own ``Run.step``, bit-identical to its separate run), ``graphs`` (each member's step replayed from a CUDA
graph on its own stream) and ``grouped`` (the members as one network of grouped convolutions, HFTA's horizontal
fusion). Why each exists and what it costs: BENCHMARKS.md, "Fused training"; tests/test_fused.py checks them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ressenet.engine.config import Config
from ressenet.engine.run import NonFiniteLoss, Run, lr_at, make_optimizer, train_step
from ressenet.engine.runtime import synchronize
from ressenet.engine.setup import build_model
from ressenet.errors import RessenetError
from ressenet.models.fused import FusedResNet

__all__ = ["STEPPERS", "Stepper", "Sequential", "Graphs", "Grouped", "FusedNetwork", "WARMUP_STEPS"]


class Stepper:
    """Advances a group's runs one SGD step at a time. ``failed`` maps a run that stopped (non-finite loss) to why;
    it no longer steps. Subclasses implement :meth:`step`; :meth:`sync` and :meth:`release` bracket the host's work at
    a boundary (reading weights and accumulators, evaluating, checkpointing).

    What a mechanism needs is said by its class: ``compiles`` (what the compile decision compiles: each run's step,
    the mechanism's own network, or nothing), ``grad_stats`` (whether it can run ``--log-grad-stats``'s probed eager
    step), ``fp16_refusal`` (why it cannot train in fp16), :meth:`amp` (an autocast context of its own, else None for
    the run's) and :meth:`check_members` (runs it cannot train together).
    """

    compiles: str | None = "runs"  # "runs", "network" or None
    grad_stats = True
    fp16_refusal: str | None = None  # why this mechanism cannot train in fp16 (one line with the fix), or None

    @classmethod
    def refuse(cls, precision: str) -> str | None:
        """Why this mechanism cannot train in ``precision`` (one line with the fix), or None."""
        return cls.fp16_refusal if precision == "fp16" else None

    @staticmethod
    def amp(precision: str, device: torch.device) -> Any:
        """The autocast context this mechanism's steps need, or None for the run's own."""
        return None

    @staticmethod
    def check_members(cfgs: list[Config]) -> None:
        """Raises RessenetError (one line with the fix) when this mechanism cannot train these runs together."""

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        """``compile_mode``: torch.compile's mode for a mechanism that compiles its own network; ``parallel_streams``:
        for mechanisms that use CUDA streams (benchmarks turn it off)."""
        self.runs = runs
        self.failed: dict[str, NonFiniteLoss] = {}

    def active(self) -> list[Run]:
        """The runs still training: not failed, not at their last iteration."""
        return [r for r in self.runs if r.name not in self.failed and r.state.it < r.cfg.optim.iters]

    def step(self) -> list[Run]:
        """One training step of every active run; returns the runs that stepped."""
        raise NotImplementedError

    def sync(self) -> None:
        """Brings every run's own model and optimizer up to date and waits for its queued work."""
        if self.runs:
            synchronize(self.runs[0].device)

    def release(self) -> None:
        """After host-side work on the default stream, the runs' own streams wait for it (none here)."""


class Sequential(Stepper):
    """Each active run's single-run step (:meth:`Run.step`, compiled when the decision said so), one after another:
    bit-identical to separate runs. The CPU's mechanism: merging the members into one network trained slower there
    and held every member's activations at once."""

    def step(self) -> list[Run]:
        stepped = self.active()
        for r in stepped:
            r.step()
        return stepped


WARMUP_STEPS = 3  # eager steps before a member's first capture (cuDNN autotuning, momentum buffers)


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
    """Mechanism ``graphs`` (CUDA): each member's whole step (forward, loss, backward, SGD update, accumulators) is
    captured once in a CUDA graph and replayed on the member's own stream, so the members' launch-bound kernels run
    side by side. The eager step's arithmetic and kernels (separate CUDA runs are compiled by default: they agree
    statistically, not to the bit). The lr is baked into the graph: a member is captured again
    at each milestone, after ``WARMUP_STEPS`` eager steps (cuDNN's search and the momentum buffers come first)."""

    compiles = None  # a captured graph already removes the launch cost torch.compile would
    grad_stats = False  # the probed step is eager; a replayed graph cannot run it

    fp16_refusal = ("--fused-mechanism graphs trains in fp32 or bf16 (fp16's loss scaling synchronises with the "
                    "host every step); use --precision bf16")

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
class FusedNetwork:
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
    def build(cls, members: list[Run], compile_mode: str | None) -> FusedNetwork:
        """Fuses the members' current weights, buffers and momentum (resumed members carry theirs)."""
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
    """Mechanism ``grouped`` (any device): the active members as one network with grouped convolutions
    (models/fused.py) and one SGD optimizer. The members' own models and optimizers stay the record: the fused copy
    is built from them and written back before every boundary, so evaluation, checkpoints and resume are a separate
    run's. Equal to separate runs up to summation order; members resumed at different iterations take single-run
    steps until level. Needs fp32 or bf16 and no ``--log-grad-stats``."""

    compiles = "network"  # the fused network, not each member
    grad_stats = False  # the probed step is a member's own eager step

    fp16_refusal = ("--fused-mechanism grouped trains in fp32 or bf16 (one fp16 loss scaler would skip every "
                    "member's step when one member overflows); use --precision bf16")

    @staticmethod
    def check_members(cfgs: list[Config]) -> None:
        """The members' networks fuse into one (built on the meta device: no memory, no time)."""
        with torch.device("meta"):
            try:
                FusedResNet([build_model(c, c.model.num_classes or 10) for c in cfgs])
            except ValueError as e:
                raise RessenetError(f"--fused-mechanism grouped cannot fuse "
                                    f"{', '.join(sorted({c.model.name for c in cfgs}))}: {e}; use --fused-mechanism "
                                    f"sequential, or one command per block type") from None

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        super().__init__(runs)
        self.compile_mode = compile_mode
        self.network: FusedNetwork | None = None  # the fused network of the members that stepped last

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
            g = self.network = FusedNetwork.build(members, self.compile_mode)
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


def _momentum(m: Run) -> dict[str, torch.Tensor]:
    """A member's SGD momentum buffers by parameter name (empty before its first step)."""
    return {k: buf for k, p in m.model.named_parameters()
            if (buf := m.optimizer.state.get(p, {}).get("momentum_buffer")) is not None}


# --fused-mechanism -> its stepper (engine/fused.py drives it); "auto" resolves first (fused.py resolve_mechanism).
STEPPERS: dict[str, type[Stepper]] = {"sequential": Sequential, "graphs": Graphs, "grouped": Grouped}
