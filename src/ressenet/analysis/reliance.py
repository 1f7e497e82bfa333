"""One run analysed: its gates' statistics over the test set, and top-1 with gates replaced (reliance).

The drop's interval and McNemar's test are :func:`ressenet.experiments.stats.paired_drop`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ressenet.analysis.gates import GateAccumulator, GateStats
from ressenet.analysis.hooks import gate_override, record_gates
from ressenet.analysis.inputs import Opened
from ressenet.analysis.sites import KIND_TEXT, SESite, se_sites_of
from ressenet.data import eval_batches
from ressenet.engine.setup import RunData, resolve_channels_last, resolve_eval_batch_size
from ressenet.errors import RessenetError
from ressenet.experiments.stats import PairedDrop, paired_drop
from ressenet.models import model_info

__all__ = ["GroupKey", "RelianceRow", "RunAnalysis", "analyze_run"]


class GroupKey(NamedTuple):
    """What makes runs seeds of one another on the analysis page: same model, data, layout, options and length."""

    model: str
    dataset: str
    layout: str
    shortcut: str
    se_reduction: int | None
    iters: int


@dataclass
class RelianceRow:
    """One row of the reliance table: test accuracy when the SE gates at ``target`` are replaced, paired with the
    intact run."""

    target: str  # an SE block's module name, or "all" / "all bridge" / "all residual" / "all identity" / ...
    replacement: str  # "mean" or "one"
    result: PairedDrop
    blocks: int  # how many SE blocks were replaced


@dataclass
class RunAnalysis:
    """Everything ``ressenet analyze`` measured on one run's checkpoint: what it is, its gate statistics and its
    reliance rows."""

    path: Path
    checkpoint: Path
    model: str
    family: str | None
    family_title: str
    placement: str
    depth: int | None
    seed: int
    iter: int | None
    iters: int
    dataset: str
    dataset_text: str
    group: GroupKey
    classes: list[str]
    n_images: int
    intact_top1: float
    sites: list[SESite]
    stats: dict[str, GateStats] = field(default_factory=dict)
    reliance: list[RelianceRow] = field(default_factory=list)
    other_data: bool = False  # the data loaded now is not the data the checkpoint was trained on (fingerprints)

    @property
    def label(self) -> str:
        return f"{self.model} s{self.seed}"



def _group_key(cfg: Any) -> GroupKey:
    m = cfg.model
    return GroupKey(m.name, cfg.data.dataset, m.layout, m.shortcut, m.se_reduction, cfg.optim.iters)


@torch.no_grad()
def _correct(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
             on_batch: Callable[[Tensor], None] | None = None) -> Tensor:
    out = []
    for x, y in batches:
        if on_batch is not None:
            on_batch(y)
        out.append((model(x).argmax(1) == y).cpu())
    if not out:
        raise RessenetError("evaluation got no images")
    return torch.cat(out)


def analyze_run(opened: Opened, data: RunData, device: torch.device, *, batch_size: int | None = None,
                blocks: Sequence[str] | None = None, reliance: bool = True,
                confidence: float = 0.95) -> RunAnalysis:
    """Excitation statistics and reliance of one opened checkpoint on its test split (``data`` from load_data)."""
    cfg, model = opened.cfg, opened.model
    test = data.test
    classes = data.classes
    if model.fc.out_features != len(classes):
        raise RessenetError(f"{opened.checkpoint} has a {model.fc.out_features}-class head but its data has "
                            f"{len(classes)} classes; pass the --data-root it was trained on")
    channels_last = resolve_channels_last(cfg.run.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    bs = resolve_eval_batch_size(batch_size, device)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        return eval_batches(test, bs, mean=data.mean, std=data.std, device=device, channels_last=channels_last)

    sites = se_sites_of(model)
    accs = {s.name: GateAccumulator(s.channels, len(classes), device) for s in sites}
    labels: list[Tensor] = []

    def sink(name: str, gate: Tensor) -> None:
        accs[name].add(gate, labels[-1])

    with record_gates(model, sink):
        intact = _correct(model, batches(), on_batch=labels.append)
    stats = {name: acc.result() for name, acc in accs.items()}

    info = model_info(cfg.model.name)
    fam = info.family if info is not None else None
    lossless = getattr(test, "lossless", None)
    ds_text = cfg.data.dataset + (" (JPEG copy)" if lossless is False else "")
    recorded = opened.state.get("data_fingerprint")
    other_data = recorded is not None and recorded != data.fingerprint
    run = RunAnalysis(path=opened.path, checkpoint=opened.checkpoint, model=cfg.model.name,
                      family=fam.key if fam else None, family_title=fam.title if fam else cfg.model.name,
                      placement=fam.placement.value if fam else "unknown", depth=info.depth if info else None,
                      seed=int(cfg.run.seed), iter=opened.state.get("iter"), iters=int(cfg.optim.iters),
                      dataset=cfg.data.dataset, dataset_text=ds_text, group=_group_key(cfg), classes=classes,
                      n_images=int(intact.numel()), intact_top1=100.0 * float(intact.float().mean()), sites=sites,
                      stats=stats, other_data=other_data)
    if not reliance or not sites:
        return run

    names = list(blocks) if blocks else [s.name for s in sites]
    means = {name: torch.as_tensor(st.mean, dtype=torch.float32) for name, st in stats.items()}
    what = f"{cfg.model.name} ({opened.checkpoint})"
    targets: list[tuple[str, list[str]]] = [(n, [n]) for n in names]
    if len(names) > 1:
        targets.append(("all" if len(names) == len(sites) else "all selected", names))
        kinds = {s.kind for s in sites if s.name in names}
        if len(kinds) > 1:
            for kind in sorted(kinds):
                sel = [s.name for s in sites if s.name in names and s.kind == kind]
                targets.append((f"all {KIND_TEXT.get(kind, kind)}", sel))
    for target, sel in targets:
        for how in ("mean", "one"):
            with gate_override(model, {n: how for n in sel}, means=means, what=what):
                mod = _correct(model, batches())
            run.reliance.append(RelianceRow(target, how, paired_drop(intact.numpy(), mod.numpy(), confidence),
                                            len(sel)))
    return run

