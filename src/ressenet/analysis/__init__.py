"""What the SE blocks of a trained run learned, and how much the network relies on them.

The paper (Varshaneya et al., arXiv:1902.06066) explains Res-SE-Net's gain by SE blocks on the bridge-connections
that "enhance" the features the bridges carry. ``analyze(run_dirs, out_dir)`` examines that on any checkpoint the
engine wrote (any family and depth, the ablations, fused members), for every SE block, bridge and residual alike:

* **Excitation statistics** over the test set: the distribution of gate values per block (quantiles), the mean gate
  vector per class (class-conditional excitation, Hu et al.'s figure for SE-ResNet) and selectivity, the variance
  of the class means across classes against the mean within-class variance. A block whose gate hardly moves from
  image to image (no channel's across-image std reaches ``constant_std``) is flagged: it is a learned per-channel
  scale, which the batch norm before it could carry alone.
* **Reliance**: test top-1 with a block's gate replaced at inference by (a) its test-set mean vector (the input
  dependence removed, the average scale kept) and (b) 1 (the block removed), one block at a time and all at once,
  against the intact network, on the same images. The drop's 95% interval is the exact conditional (Clopper-Pearson)
  interval on the discordant pairs, McNemar's setting: of the ``d`` images whose correctness changed, ``b`` lost
  and ``c`` gained, ``b ~ Binomial(d, p)`` and drop ``= d (2p - 1) / N``; the p-value is McNemar's exact test.
* **Across runs**: runs of one model (seeds) are aggregated per block position with mean, std and n.

Replacements are forward hooks on :class:`~ressenet.models.layers.SEBlock` (see :func:`gate_override`); gates are
read through the blocks' own ``record`` flag. Nothing in the model code changes.

Outputs in ``out_dir``: ``analysis.md``, ``gates.csv`` (one row per run and block), ``gate_channels.csv`` (per
channel), ``gate_class_means.csv`` (per class and channel), ``reliance.csv``, ``across_runs.csv`` and PNGs drawn
with matplotlib's object API.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ressenet.errors import RessenetError

__all__ = ["analyze", "add_parser", "cmd_analyze", "SESite", "se_sites_of", "gate_override", "record_gates",
           "GateAccumulator", "GateStats", "PairedDrop", "paired_drop", "RunAnalysis", "analyze_run",
           "RelianceRow", "write_outputs", "CONSTANT_STD", "HIST_BINS", "QUANTILES"]

CONSTANT_STD = 0.02  # a block whose every channel's gate has an across-image std below this is "constant"
HIST_BINS = 10_000  # gate histogram over [0, 1]: quantiles to 1e-4
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
KIND_TEXT = {"bridge_after": "bridge (after conv)", "bridge_before": "bridge (before conv)",
             "identity": "identity", "residual": "residual", "other": "other"}
KIND_PHRASE = {"bridge_after": "a bridge SE, after the conv", "bridge_before": "a bridge SE, before the conv",
               "identity": "an identity SE", "residual": "a residual SE", "other": "an SE block"}
# What could carry a gate that is the same for every image (eval-mode BN is a per-channel affine map).
CARRIER = {"bridge_after": "a learned per-channel scale that the bridge's batch norm could carry",
           "bridge_before": "a learned per-channel scale that the bridge's conv1x1 could carry",
           "residual": "a learned per-channel scale that the branch's last batch norm could carry",
           "identity": "a learned per-channel scale on the identity path, where no batch norm sits to carry it",
           "other": "a learned per-channel scale"}


# ---------------------------------------------------------------------------------------------------------------
# SE blocks of a model: where they sit
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SESite:
    """One SE block: its module name, where it sits, and its width."""

    name: str  # module name, e.g. "layer2.0.shortcut.se_after"
    kind: str  # bridge_after | bridge_before | identity | residual | other
    stage: int  # 1..3 (0 when unknown)
    index: int  # block index within the stage (-1 when unknown)
    channels: int

    @property
    def on_bridge(self) -> bool:
        return self.kind.startswith("bridge")

    @property
    def short(self) -> str:
        """``s2b0 bridge``: compact label for figures."""
        kind = {"bridge_after": "bridge", "bridge_before": "bridge-in", "identity": "ident", "residual": "res"}
        return f"s{self.stage}b{self.index} {kind.get(self.kind, self.kind)}"

    @property
    def text(self) -> str:
        return f"stage {self.stage} block {self.index}, {KIND_TEXT.get(self.kind, self.kind)}"


_NAME_RE = re.compile(r"^layer(\d+)\.(\d+)\.(se|shortcut\.se_after|shortcut\.se_before)$")


def se_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every SE block of ``model`` by module name, in module order."""
    from ressenet.models.layers import SEBlock

    return {n: m for n, m in model.named_modules() if isinstance(m, SEBlock)}


def se_sites_of(model: nn.Module) -> list[SESite]:
    """The SE blocks of a model with their placement (residual branch, bridge after/before its conv, identity)."""
    sites = []
    for name, m in se_modules(model).items():
        match = _NAME_RE.match(name)
        if match is None:
            sites.append(SESite(name, "other", 0, -1, int(m.channels)))
            continue
        stage, index, where = int(match[1]), int(match[2]), match[3]
        if where == "se":
            kind = "residual"
        else:
            block = model.get_submodule(f"layer{stage}.{index}")
            is_bridge = bool(getattr(block, "is_bridge", False))
            kind = ("bridge_before" if where.endswith("before") else "bridge_after") if is_bridge else "identity"
        sites.append(SESite(name, kind, stage, index, int(m.channels)))
    return sites


def _missing_blocks_message(missing: Sequence[str], have: Sequence[str], what: str) -> str:
    names = ", ".join(repr(n) for n in missing)
    if not have:
        return f"cannot replace or remove SE block {names}: {what} has no SE blocks at all"
    return (f"cannot replace or remove SE block {names}: {what} has no such SE block; its SE blocks are "
            f"{', '.join(have)}")


# ---------------------------------------------------------------------------------------------------------------
# Hooks: read the gates, replace them
# ---------------------------------------------------------------------------------------------------------------
@contextmanager
def record_gates(model: nn.Module, sink: Callable[[str, Tensor], None]) -> Iterator[None]:
    """Within the context every SE block's (B, C) gate of each forward pass goes to ``sink(name, gate)``.

    Uses the blocks' ``record`` flag and ``last_weights`` (read by a forward hook and cleared at once); the flags are
    restored on exit.
    """
    modules = se_modules(model)
    old = {n: m.record for n, m in modules.items()}
    handles = []
    try:
        for name, m in modules.items():
            m.record = True

            def hook(mod: nn.Module, _inp: Any, _out: Any, name: str = name) -> None:
                if mod.last_weights is not None:
                    sink(name, mod.last_weights)
                mod.last_weights = None

            handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for name, m in modules.items():
            m.record = old[name]
            m.last_weights = None


@contextmanager
def gate_override(model: nn.Module, replace: Mapping[str, str | Tensor], *,
                  means: Mapping[str, Tensor] | None = None, what: str = "the model") -> Iterator[None]:
    """Within the context, replace the gate of each named SE block at inference.

    ``replace[name]`` is ``"one"`` (gate 1: the block removed, its input passes unchanged), ``"mean"`` (the vector
    ``means[name]``, e.g. the block's test-set mean gate) or a (C,) tensor. Implemented as forward hooks that
    return ``input * gate`` (or the input), so the SE block's own code is untouched.

    Raises:
        RessenetError: a name that is not an SE block of ``model`` (e.g. removing an SE block from a ResNet).
    """
    modules = se_modules(model)
    missing = [n for n in replace if n not in modules]
    if missing:
        raise RessenetError(_missing_blocks_message(missing, list(modules), what))
    handles = []
    try:
        for name, how in replace.items():
            if isinstance(how, str) and how == "one":
                def hook(_mod: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> Tensor:
                    return inp[0]
            else:
                if isinstance(how, str):
                    if how != "mean":
                        raise ValueError(f"replacement must be 'one', 'mean' or a tensor, got {how!r}")
                    if means is None or name not in means:
                        raise ValueError(f"replacing {name!r} by its mean gate needs means[{name!r}]")
                    vec = means[name]
                else:
                    vec = how
                vec = torch.as_tensor(vec).flatten()
                if vec.numel() != modules[name].channels:
                    raise ValueError(f"gate for {name!r} must have {modules[name].channels} values, got {vec.numel()}")
                gate = vec.view(1, -1, 1, 1)

                def hook(_mod: nn.Module, inp: tuple[Tensor, ...], _out: Tensor, gate: Tensor = gate) -> Tensor:
                    x = inp[0]
                    return x * gate.to(device=x.device, dtype=x.dtype)
            handles.append(modules[name].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------------
# Gate statistics
# ---------------------------------------------------------------------------------------------------------------
class GateAccumulator:
    """Streams (B, C) gates with their labels into per-class sums, sums of squares and a histogram.

    Sums are of ``gate - ref`` in float64, ``ref`` the first batch's per-channel mean, so a gate that is the same
    for every image gives variances of exactly zero.
    """

    def __init__(self, channels: int, num_classes: int, device: torch.device | str = "cpu",
                 bins: int = HIST_BINS) -> None:
        dev = torch.device(device)
        self.channels, self.num_classes, self.bins = channels, num_classes, bins
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=dev)
        self.sum = torch.zeros(num_classes, channels, dtype=torch.float64, device=dev)
        self.sumsq = torch.zeros(num_classes, channels, dtype=torch.float64, device=dev)
        self.hist = torch.zeros(bins, dtype=torch.float64, device=dev)
        self.lo = torch.full((), math.inf, dtype=torch.float64, device=dev)
        self.hi = torch.full((), -math.inf, dtype=torch.float64, device=dev)
        self.ref: Tensor | None = None

    def add(self, gate: Tensor, labels: Tensor) -> None:
        w = gate.detach().to(self.sum.device, torch.float64)
        y = labels.to(self.sum.device)
        if self.ref is None:
            self.ref = w.mean(0)
        d = w - self.ref
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sum.index_add_(0, y, d)
        self.sumsq.index_add_(0, y, d * d)
        self.hist += torch.histc(w.float(), bins=self.bins, min=0.0, max=1.0).double()
        self.lo = torch.minimum(self.lo, w.min())
        self.hi = torch.maximum(self.hi, w.max())

    def result(self) -> GateStats:
        if self.ref is None:
            raise RessenetError("no gates were recorded (an empty test set?)")
        count = self.count.cpu().numpy()
        ref = self.ref.cpu().numpy()
        s, ss = self.sum.cpu().numpy(), self.sumsq.cpu().numpy()
        present = count > 0
        n = count[present][:, None]
        cls_mean_d = s[present] / n
        within = np.maximum(ss[present] / n - cls_mean_d ** 2, 0.0)  # (K', C), population variance
        total = count.sum()
        mean_d = s.sum(0) / total
        var = np.maximum(ss.sum(0) / total - mean_d ** 2, 0.0)
        class_mean = np.full((self.num_classes, self.channels), np.nan)
        class_mean[present] = cls_mean_d + ref
        return GateStats(n_images=int(total), class_counts=count.astype(int), class_mean=class_mean,
                         mean=mean_d + ref, std=np.sqrt(var), within=within.mean(0),
                         between=cls_mean_d.var(0) if present.sum() > 1 else np.zeros(self.channels),
                         hist=self.hist.cpu().numpy(), lo=float(self.lo), hi=float(self.hi))


@dataclass
class GateStats:
    """Test-set statistics of one SE block's gate. Per-channel arrays have shape (C,).

    ``between``: variance across classes of the class-mean gate (classes weighted equally); ``within``: mean over
    classes of the within-class variance; ``std``: across-image std over the whole test set.
    """

    n_images: int
    class_counts: np.ndarray  # (K,)
    class_mean: np.ndarray  # (K, C); NaN rows for classes absent from the test set
    mean: np.ndarray
    std: np.ndarray
    within: np.ndarray
    between: np.ndarray
    hist: np.ndarray  # (HIST_BINS,) counts over [0, 1]
    lo: float
    hi: float

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> list[float]:
        return hist_quantiles(self.hist, qs, self.lo, self.hi)

    @property
    def between_block(self) -> float:
        return float(self.between.mean())

    @property
    def within_block(self) -> float:
        return float(self.within.mean())

    @property
    def ratio(self) -> float:
        """Selectivity: mean across-class variance over mean within-class variance (0 when the gate never moves)."""
        b, w = self.between_block, self.within_block
        if b <= 0.0:
            return 0.0
        return b / w if w > 0 else math.inf

    @property
    def eta2(self) -> float:
        """Share of the gate's variance that the class explains, between / (between + within), in [0, 1]."""
        b, w = self.between_block, self.within_block
        return b / (b + w) if b + w > 0 else 0.0

    @property
    def std_mean(self) -> float:
        return float(self.std.mean())

    @property
    def std_max(self) -> float:
        return float(self.std.max())

    def constant(self, threshold: float = CONSTANT_STD) -> bool:
        """No channel's gate has an across-image std of ``threshold`` or more."""
        return self.std_max < threshold


def hist_quantiles(hist: np.ndarray, qs: Sequence[float], lo: float, hi: float) -> list[float]:
    """Quantiles of values binned uniformly over [0, 1] (linear within a bin), clipped to the exact [lo, hi]."""
    total = float(hist.sum())
    if total <= 0:
        return [math.nan] * len(qs)
    edges = np.linspace(0.0, 1.0, len(hist) + 1)
    cum = np.concatenate([[0.0], np.cumsum(hist)]) / total
    out = []
    for q in qs:
        if q <= 0:
            out.append(lo)
        elif q >= 1:
            out.append(hi)
        else:
            i = int(np.searchsorted(cum, q, side="left"))
            i = min(max(i, 1), len(hist))
            c0, c1 = cum[i - 1], cum[i]
            frac = (q - c0) / (c1 - c0) if c1 > c0 else 0.0
            out.append(float(min(max(edges[i - 1] + frac * (edges[i] - edges[i - 1]), lo), hi)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Paired accuracy difference on the same images
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedDrop:
    """Top-1 of the intact network minus top-1 of a modified one, in points, on the same N images.

    ``lost``: images the intact network got right and the modified one wrong; ``gained``: the reverse. The interval
    is the exact conditional (Clopper-Pearson) interval on the discordant pairs; ``p`` is McNemar's exact test.
    """

    n: int
    intact_top1: float
    top1: float
    drop: float
    ci_low: float
    ci_high: float
    lost: int
    gained: int
    p: float
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_drop(intact: Tensor | np.ndarray, modified: Tensor | np.ndarray, confidence: float = 0.95) -> PairedDrop:
    """The paired drop in top-1 (points) with its exact interval on the discordant pairs (see :class:`PairedDrop`)."""
    from scipy import stats as sps

    a = np.asarray(intact, dtype=bool)
    b = np.asarray(modified, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("intact and modified must be equal-length, non-empty 1-d correctness vectors")
    n = int(a.size)
    lost, gained = int((a & ~b).sum()), int((~a & b).sum())
    d = lost + gained
    scale = 100.0 * d / n
    alpha = 1.0 - confidence
    if d == 0:
        lo = hi = 0.0
        p = 1.0
    else:
        p_lo = float(sps.beta.ppf(alpha / 2, lost, gained + 1)) if lost > 0 else 0.0
        p_hi = float(sps.beta.ppf(1 - alpha / 2, lost + 1, gained)) if gained > 0 else 1.0
        lo, hi = scale * (2 * p_lo - 1), scale * (2 * p_hi - 1)
        p = float(sps.binomtest(lost, d, 0.5).pvalue)
    return PairedDrop(n=n, intact_top1=100.0 * a.mean(), top1=100.0 * b.mean(), drop=100.0 * (lost - gained) / n,
                      ci_low=lo, ci_high=hi, lost=lost, gained=gained, p=p, confidence=confidence)


# ---------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RelianceRow:
    target: str  # an SE block's module name, or "all" / "all bridge" / "all residual" / "all identity" / ...
    replacement: str  # "mean" or "one"
    result: PairedDrop
    blocks: int  # how many SE blocks were replaced


@dataclass
class RunAnalysis:
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
    group: tuple
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


@dataclass
class _Opened:
    """A checkpoint with its config and model, before any data is loaded (cheap: checks come first)."""

    path: Path
    checkpoint: Path
    state: dict[str, Any]
    cfg: Any
    model: nn.Module


def _resolve_checkpoints(run_dirs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(run dir, checkpoint) for each argument: a run dir (its last.pt), a .pt file, or a folder of run dirs (a
    fused group, a grid's runs dir: each subfolder holding a last.pt)."""
    if not run_dirs:
        raise RessenetError("analyze needs at least one run directory")
    out: list[tuple[Path, Path]] = []
    for arg in run_dirs:
        p = Path(arg)
        if p.is_file():
            out.append((p.parent, p))
        elif (p / "last.pt").is_file():
            out.append((p, p / "last.pt"))
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if (d / "last.pt").is_file())
            if not subs:
                why = "a config.yaml but no last.pt yet" if (p / "config.yaml").is_file() else "no last.pt"
                raise RessenetError(f"{p} holds {why}, nor any run directory with one; pass run directories "
                                    f"written by `ressenet train` (or their last.pt)")
            out += [(d, d / "last.pt") for d in subs]
        else:
            raise RessenetError(f"run directory {p} does not exist")
    seen: set[Path] = set()
    unique = []
    for run, ckpt in out:
        key = ckpt.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((run, ckpt))
    return unique


def _open(run: Path, ckpt: Path) -> _Opened:
    from ressenet.engine.checkpoint import load_checkpoint
    from ressenet.engine.config import config_from_dict
    from ressenet.engine.train import build_model

    state = load_checkpoint(ckpt)
    if not isinstance(state.get("config"), dict):
        raise RessenetError(f"{ckpt} holds no config; analyze reads checkpoints written by `ressenet train`")
    try:
        cfg = config_from_dict(state["config"], where=str(ckpt))
    except (ValueError, TypeError, AttributeError) as e:
        raise RessenetError(f"{ckpt}: unreadable config ({e})") from None
    fc = state["model"].get("fc.weight") if isinstance(state["model"], dict) else None
    num_classes = int(fc.shape[0]) if fc is not None else (cfg.model.num_classes or 10)
    model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise RessenetError(f"{ckpt}: its weights do not fit {cfg.model.name} ({first})") from None
    model.eval()
    kept = {k: state.get(k) for k in ("iter", "data_fingerprint")}  # not the optimizer state: runs are held together
    return _Opened(run, ckpt, kept, cfg, model)


def _group_key(cfg: Any) -> tuple:
    m = cfg.model
    return (m.name, cfg.data.dataset, m.layout, m.shortcut, m.se_reduction, cfg.optim.iters)


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


def analyze_run(opened: _Opened, data: dict[str, Any], device: torch.device, *, batch_size: int | None = None,
                blocks: Sequence[str] | None = None, reliance: bool = True,
                confidence: float = 0.95) -> RunAnalysis:
    """Excitation statistics and reliance of one opened checkpoint on its test split (``data`` from load_data)."""
    from ressenet.data import eval_batches
    from ressenet.engine.train import resolve_channels_last, resolve_eval_batch_size
    from ressenet.models import model_info

    cfg, model = opened.cfg, opened.model
    test = data["test"]
    classes = list(data["train"].classes)
    if model.fc.out_features != len(classes):
        raise RessenetError(f"{opened.checkpoint} has a {model.fc.out_features}-class head but its data has "
                            f"{len(classes)} classes; pass the --data-root it was trained on")
    channels_last = resolve_channels_last(cfg.run.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    bs = resolve_eval_batch_size(batch_size, device)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        return eval_batches(test, bs, mean=data["mean"], std=data["std"], device=device, channels_last=channels_last)

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
    other_data = recorded is not None and data.get("fingerprint") is not None and recorded != data["fingerprint"]
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


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def analyze(run_dirs: Sequence[str | Path], out_dir: str | Path, *, device: str = "auto",
            data_root: str | None = None, cache_dir: str | None = None, batch_size: int | None = None,
            blocks: Sequence[str] | None = None, reliance: bool = True, constant_std: float = CONSTANT_STD,
            confidence: float = 0.95, figures: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Analyse the SE blocks of one or more runs' ``last.pt`` on their test split; write ``out_dir``.

    Args:
        run_dirs: run directories (their ``last.pt``), checkpoint files, or folders of run directories (a fused
            group's ``--out``).
        out_dir: where ``analysis.md``, the CSVs and the PNGs go (created).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root, cache_dir: override the checkpoints' data location (e.g. the data moved).
        batch_size: evaluation batch (default: 1000 on CUDA, 100 on the CPU).
        blocks: restrict the reliance tests to these SE blocks (module names, e.g. ``layer2.0.shortcut.se_after``);
            a name a checkpoint does not have is refused. Default: every SE block.
        reliance: run the reliance tests (2 passes over the test set per block, plus the all-at-once ones).
        constant_std: a block is a "learned per-channel scale" when no channel's across-image gate std reaches this.
        confidence: level of the drop's interval.

    Returns:
        The path of ``analysis.md``.

    Raises:
        RessenetError: no checkpoint, a damaged one, or a ``blocks`` name that a checkpoint's model has no SE block of.
    """
    from ressenet.engine.evaluation import data_as_given
    from ressenet.engine.train import load_data, resolve_device

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not constant_std > 0:
        raise ValueError(f"constant_std must be positive, got {constant_std}")
    say = progress or (lambda _m: None)
    dev = resolve_device(device)
    opened = [_open(run, ckpt) for run, ckpt in _resolve_checkpoints(run_dirs)]
    if blocks:  # refuse before any data is loaded
        for o in opened:
            have = list(se_modules(o.model))
            missing = [b for b in blocks if b not in have]
            if missing:
                raise RessenetError(_missing_blocks_message(missing, have, f"{o.cfg.model.name} ({o.checkpoint})"))
    data_cache: dict[str, dict[str, Any]] = {}
    runs: list[RunAnalysis] = []
    for o in opened:
        data_as_given(o.cfg, data_root=data_root, cache_dir=cache_dir)  # as `ressenet eval`
        key = json.dumps(asdict(o.cfg.data), sort_keys=True, default=str)
        if key not in data_cache:
            say(f"loading {o.cfg.data.dataset} for {o.path}")
            data_cache[key] = load_data(o.cfg)
        say(f"analysing {o.path} ({o.cfg.model.name}, {len(se_modules(o.model))} SE blocks)")
        runs.append(analyze_run(o, data_cache[key], dev, batch_size=batch_size, blocks=blocks, reliance=reliance,
                                confidence=confidence))
        o.model.cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_outputs(runs, out, constant_std=constant_std, confidence=confidence, figures=figures)
    # Gradient flow over training, for runs trained with --log-grad-stats (engine/run.py; ressenet/gradflow.py).
    from ressenet.gradflow import grad_flow_section

    dirs = [Path(o.path) if Path(o.path).is_dir() else Path(o.path).parent for o in opened]
    extra = grad_flow_section(dirs, out)
    if extra:
        path.write_text(path.read_text().rstrip() + "\n\n" + "\n".join(extra))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Aggregation across runs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agg:
    n: int
    mean: float
    std: float  # sample std (ddof=1); NaN for n < 2

    def fmt(self, digits: int = 3, n: bool = True, spec: str = "f") -> str:
        """``0.39 ± 0.55 (n=2)``; a single value without ± ; ``spec="g"`` for small variances."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "–" if self.n == 0 or math.isnan(self.mean) else "inf"

        def num(x: float) -> str:
            text = f"{x:.{digits}{spec}}"
            return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"

        if self.n == 1:
            return num(self.mean) + (" (n=1)" if n else "")
        return f"{num(self.mean)} ± {num(self.std)}" + (f" (n={self.n})" if n else "")


def agg(values: Sequence[float]) -> Agg:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Agg(0, math.nan, math.nan)
    return Agg(int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan)


def _groups(runs: Sequence[RunAnalysis]) -> dict[tuple, list[RunAnalysis]]:
    from ressenet.models import family_order, natural_key

    out: dict[tuple, list[RunAnalysis]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    order = sorted(out, key=lambda k: (family_order(out[k][0].family), natural_key(k[0]), str(k)))
    return {k: sorted(out[k], key=lambda r: (r.seed, str(r.path))) for k in order}


def _group_title(g: list[RunAnalysis]) -> str:
    r = g[0]
    return f"{r.model} ({r.family_title}) on {r.dataset_text}, {r.iters:,} iterations"


def _block_summary(g: list[RunAnalysis], constant_std: float) -> list[dict[str, Any]]:
    """Per block position of a group: the statistics over its runs."""
    rows = []
    for site in g[0].sites:
        st = [r.stats[site.name] for r in g if site.name in r.stats]
        rel = {how: [row.result.drop for r in g for row in r.reliance
                     if row.target == site.name and row.replacement == how] for how in ("mean", "one")}
        rows.append({"site": site, "n": len(st),
                     "std_max_runs": [(r.seed, r.stats[site.name].std_max) for r in g if site.name in r.stats],
                     "std_mean": agg([s.std_mean for s in st]), "std_max": agg([s.std_max for s in st]),
                     "gate_mean": agg([float(s.mean.mean()) for s in st]),
                     "between": agg([s.between_block for s in st]), "within": agg([s.within_block for s in st]),
                     "ratio": agg([s.ratio for s in st]), "eta2": agg([s.eta2 for s in st]),
                     "constant": sum(s.constant(constant_std) for s in st),
                     "drop_mean": agg(rel["mean"]), "drop_one": agg(rel["one"])})
    return rows


def _target_summary(g: list[RunAnalysis]) -> list[dict[str, Any]]:
    """Per reliance target (block or all-at-once) and replacement: drops over runs, and how many CIs exclude 0."""
    keys: list[tuple[str, str]] = []
    for r in g:
        for row in r.reliance:
            if (row.target, row.replacement) not in keys:
                keys.append((row.target, row.replacement))
    out = []
    for target, how in keys:
        res = [row.result for r in g for row in r.reliance if row.target == target and row.replacement == how]
        out.append({"target": target, "replacement": how, "drop": agg([x.drop for x in res]),
                    "top1": agg([x.top1 for x in res]), "excl": sum(x.excludes_zero for x in res),
                    "pos": sum(x.ci_low > 0 for x in res), "n": len(res), "results": res})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
def _f(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if x == math.inf else ""
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_outputs(runs: Sequence[RunAnalysis], out: Path, *, constant_std: float = CONSTANT_STD,
                  confidence: float = 0.95, figures: bool = True) -> Path:
    """Write the CSVs, the figures and ``analysis.md`` for analysed runs; return the markdown's path."""
    qnames = [f"q{int(round(q * 100)):02d}" if 0 < q < 1 else ("min" if q == 0 else "max") for q in QUANTILES]
    base = ["run", "model", "family", "seed", "iter"]

    def ident(r: RunAnalysis) -> list[Any]:
        return [str(r.path), r.model, r.family or "", r.seed, r.iter]

    gate_rows, chan_rows, class_rows, rel_rows = [], [], [], []
    for r in runs:
        for s in r.sites:
            st = r.stats[s.name]
            gate_rows.append(ident(r) + [s.name, s.kind, s.stage, s.index, s.channels, st.n_images,
                                         _f(float(st.mean.mean()), 6), _f(st.std_mean, 6), _f(st.std_max, 6)]
                             + [_f(q, 6) for q in st.quantiles()]
                             + [_f(st.between_block, 6), _f(st.within_block, 6), _f(st.ratio, 6), _f(st.eta2, 6),
                                int(st.constant(constant_std))])
            for c in range(s.channels):
                chan_rows.append(ident(r) + [s.name, s.kind, c, _f(float(st.mean[c]), 6), _f(float(st.std[c]), 6),
                                             _f(float(st.between[c]), 6), _f(float(st.within[c]), 6)])
            for k, cname in enumerate(r.classes):
                if st.class_counts[k] == 0:
                    continue
                class_rows += [ident(r) + [s.name, s.kind, cname, c, _f(float(st.class_mean[k, c]), 6)]
                               for c in range(s.channels)]
        for row in r.reliance:
            x = row.result
            rel_rows.append(ident(r) + [row.target, row.replacement, row.blocks, x.n, _f(x.intact_top1, 4),
                                        _f(x.top1, 4), _f(x.drop, 4), _f(x.ci_low, 4), _f(x.ci_high, 4), x.lost,
                                        x.gained, _f(x.p, 4), x.confidence])
    _write_csv(out / "gates.csv", base + ["block", "site", "stage", "index", "channels", "images", "gate_mean",
                                          "gate_std_mean", "gate_std_max"] + qnames
               + ["between_class_var", "within_class_var", "selectivity_ratio", "eta2", "constant"], gate_rows)
    _write_csv(out / "gate_channels.csv", base + ["block", "site", "channel", "gate_mean", "gate_std",
                                                  "between_class_var", "within_class_var"], chan_rows)
    _write_csv(out / "gate_class_means.csv", base + ["block", "site", "class", "channel", "gate_mean"], class_rows)
    _write_csv(out / "reliance.csv", base + ["target", "replacement", "blocks", "images", "intact_top1", "top1",
                                             "drop", "ci_low", "ci_high", "lost", "gained", "p_mcnemar_exact",
                                             "confidence"], rel_rows)

    groups = _groups(runs)
    across = []
    for key, g in groups.items():
        for b in _block_summary(g, constant_std):
            for metric in ("gate_mean", "std_mean", "std_max", "between", "within", "ratio", "eta2", "drop_mean",
                           "drop_one"):
                a = b[metric]
                across.append([key[0], g[0].dataset, g[0].iters, b["site"].name, b["site"].kind, metric, a.n,
                               _f(a.mean, 6), _f(a.std, 6)])
        for t in _target_summary(g):
            if t["target"].startswith("all"):
                a = t["drop"]
                across.append([key[0], g[0].dataset, g[0].iters, t["target"], "", f"drop_{t['replacement']}", a.n,
                               _f(a.mean, 6), _f(a.std, 6)])
        a = agg([r.intact_top1 for r in g])
        across.append([key[0], g[0].dataset, g[0].iters, "", "", "intact_top1", a.n, _f(a.mean, 6), _f(a.std, 6)])
    _write_csv(out / "across_runs.csv", ["model", "dataset", "iters", "block", "site", "metric", "n", "mean", "std"],
               across)

    figs: list[tuple[str, str]] = []
    if figures:
        figs = _figures(runs, groups, out)
    md = _markdown(runs, groups, figs, constant_std=constant_std, confidence=confidence)
    path = out / "analysis.md"
    path.write_text(md)
    return path


def _slug(text: str) -> str:
    from ressenet.experiments.runs import slug

    return slug(text)


def _gkey_slug(key: tuple) -> str:
    return _slug(f"{key[0]}_{key[1]}" + (f"_{key[5]}it" if key[5] else ""))


def _markdown(runs: Sequence[RunAnalysis], groups: dict[tuple, list[RunAnalysis]], figs: list[tuple[str, str]], *,
              constant_std: float, confidence: float) -> str:
    pct = int(round(confidence * 100))
    lines = ["# SE-block analysis", "",
             "What the SE blocks of each run learned on its test split, and how much the network relies on them. "
             "Definitions and methods are at the end.", "",
             "## Runs", "",
             "| run | model | family | seed | trained | data | test images | intact top-1 (%) | SE blocks |",
             "| --- | --- | --- | ---: | --- | --- | ---: | ---: | --- |"]
    for r in runs:
        kinds: dict[str, int] = {}
        for s in r.sites:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
        se = ", ".join(f"{v} {KIND_TEXT.get(k, k)}" for k, v in kinds.items()) or "none"
        trained = f"{r.iter:,} of {r.iters:,} it" if r.iter is not None else f"? of {r.iters:,} it"
        lines.append(f"| `{r.path}` | {r.model} | {r.family_title} | {r.seed} | {trained} | {r.dataset_text} | "
                     f"{r.n_images:,} | {r.intact_top1:.2f} | {se} |")
    lines.append("")
    other = [r for r in runs if r.other_data]
    if other:
        one = len(other) == 1
        lines += [f"Warning: {', '.join(f'`{r.path}`' for r in other)} {'was' if one else 'were'} analysed on other "
                  f"data than {'it was' if one else 'they were'} trained on (the data fingerprints differ).", ""]
    unfinished = [r for r in runs if r.iter is not None and r.iter < r.iters]
    if unfinished:
        lines += [f"{len(unfinished)} of the runs are unfinished (their last.pt is mid-run): their figures describe "
                  f"a partly trained network.", ""]

    for key, g in groups.items():
        n = len(g)
        r0 = g[0]
        top1 = agg([r.intact_top1 for r in g]).fmt(2, False)
        lines += [f"## {_group_title(g)}", "", f"{n} run{'s' if n > 1 else ''} (seed{'s' if n > 1 else ''} "
                  f"{', '.join(str(r.seed) for r in g)}); intact test top-1 {top1} %.", ""]
        if not r0.sites:
            lines += [f"{r0.model} has no SE blocks (placement {r0.placement}): there are no gates to analyse and "
                      f"nothing to replace.", ""]
            continue
        blocks = _block_summary(g, constant_std)
        nn_ = "" if n == 1 else f" (mean ± std over {n} runs)"
        lines += [f"### Excitation{nn_}", "",
                  "| block | site | C | mean gate | across-image std (mean / max over channels) | between-class var "
                  "| within-class var | ratio | η² | constant |",
                  "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for b in blocks:
            s = b["site"]
            lines.append(f"| `{s.name}` | {KIND_TEXT.get(s.kind, s.kind)} | {s.channels} | "
                         f"{b['gate_mean'].fmt(3, False)} "
                         f"| {b['std_mean'].fmt(4, False)} / {b['std_max'].fmt(4, False)} | "
                         f"{b['between'].fmt(3, False, 'g')} | {b['within'].fmt(3, False, 'g')} | "
                         f"{b['ratio'].fmt(3, False, 'g')} | {b['eta2'].fmt(3, False)} | {b['constant']} of {b['n']} |")
        lines.append("")
        if n == 1:
            lines += ["Gate quantiles over all channels and test images:", "",
                      "| block | " + " | ".join(("min", "1%", "5%", "25%", "50%", "75%", "95%", "99%", "max")) + " |",
                      "| --- |" + " ---: |" * len(QUANTILES)]
            for s in r0.sites:
                lines.append(f"| `{s.name}` | " + " | ".join(f"{q:.3f}" for q in r0.stats[s.name].quantiles()) + " |")
            lines.append("")
        targets = _target_summary(g)
        if targets:
            lines += ["### Reliance (top-1 drop in points; intact minus modified)", ""]
            if n == 1:
                lines += [f"| gate replaced in | by its test-set mean: drop [{pct}% CI] | p | by 1 (removed): drop "
                          f"[{pct}% CI] | p |", "| --- | --- | ---: | --- | ---: |"]
                for tgt in dict.fromkeys(t["target"] for t in targets):
                    cells = []
                    for how in ("mean", "one"):
                        t = next((t for t in targets if t["target"] == tgt and t["replacement"] == how), None)
                        x = t["results"][0] if t else None
                        cells += ([f"{x.drop:+.2f} [{x.ci_low:+.2f}, {x.ci_high:+.2f}]", _p(x.p)] if x
                                  else ["–", "–"])
                    lines.append(f"| {_target_text(tgt)} | " + " | ".join(cells) + " |")
            else:
                lines += [f"| gate replaced in | by its test-set mean: drop | runs whose {pct}% CI excludes 0 | by 1 "
                          f"(removed): drop | runs whose {pct}% CI excludes 0 |", "| --- | --- | ---: | --- | ---: |"]
                for tgt in dict.fromkeys(t["target"] for t in targets):
                    cells = []
                    for how in ("mean", "one"):
                        t = next((t for t in targets if t["target"] == tgt and t["replacement"] == how), None)
                        cells += [t["drop"].fmt(2), f"{t['excl']} of {t['n']}"] if t else ["–", "–"]
                    lines.append(f"| {_target_text(tgt)} | " + " | ".join(cells) + " |")
            lines.append("")
        head = [] if n == 1 else [f"Figures are the mean ± sample std over the {n} runs (n = {n}).", ""]
        lines += ["### Findings", ""] + head + [f"- {s}" for s in _findings(g, blocks, targets, constant_std, pct)] \
            + [""]

    se_groups = {k: g for k, g in groups.items() if g[0].sites}
    if len(groups) > 1:
        lines += ["## Across models", "",
                  "| model | n | intact top-1 (%) | all gates → mean: drop | all gates → 1: drop | blocks constant "
                  "| mean η² (bridge SE) | mean η² (other SE) |",
                  "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
        for key, g in groups.items():
            t = {(x["target"], x["replacement"]): x for x in _target_summary(g)}
            whole = _whole_target(g)
            dm = t[(whole, "mean")]["drop"].fmt(2, False) if (whole, "mean") in t else "–"
            do = t[(whole, "one")]["drop"].fmt(2, False) if (whole, "one") in t else "–"
            blocks = _block_summary(g, constant_std)
            nconst = sum(b["constant"] for b in blocks)
            ntot = sum(b["n"] for b in blocks)
            e_b = agg([r.stats[s.name].eta2 for r in g for s in r.sites if s.on_bridge])
            e_o = agg([r.stats[s.name].eta2 for r in g for s in r.sites if not s.on_bridge])
            const = f"{nconst} of {ntot}" if ntot else "–"
            lines.append(f"| {g[0].model} | {len(g)} | {agg([r.intact_top1 for r in g]).fmt(2, False)} | {dm} | {do} "
                         f"| {const} | {e_b.fmt(3, False)} | {e_o.fmt(3, False)} |")
        lines.append("")
        sent = _cross_findings(se_groups)
        if sent:
            lines += ["### Findings", ""] + [f"- {s}" for s in sent] + [""]

    if figs:
        lines += ["## Figures", ""] + [f"![{cap}]({name})\n\n{cap}\n" for name, cap in figs]

    lines += ["## Definitions and methods", "",
              "- **Gate**: the SE block's sigmoid output, one value in (0, 1) per channel and image; all figures are "
              "on the run's whole test split, in eval mode, fp32.",
              "- **Quantiles** are over all channels and test images of a block, read from a 10,000-bin histogram on "
              "[0, 1] (resolution 1e-4; min and max exact).",
              "- **Selectivity**: for each channel, the variance across classes of its class-mean gate (classes "
              "weighted equally: *between-class var*) and the mean over classes of its within-class variance "
              "(*within-class var*), both averaged over the block's channels. *Ratio* = between / within; "
              "*η²* = between / (between + within), the share of the gate's variance the class explains. A gate "
              "that never moves has both at 0 and is given ratio and η² 0.",
              f"- **Constant**: no channel's across-image std of the gate reaches {constant_std:g}. Such a gate is a "
              "learned per-channel scale: in eval mode it can be folded into the batch norm (or, before the bridge "
              "conv, the conv) before it, except on an identity path where no batch norm sits.",
              f"- **Reliance**: test top-1 with the named blocks' gates replaced at inference by their test-set mean "
              f"vector (the input dependence removed, the average scale kept) or by 1 (the block removed), through "
              f"forward hooks, against the intact network on the same images. The drop (intact minus modified, in "
              f"points) comes with a {pct}% exact conditional interval on the discordant pairs (McNemar's setting): "
              f"of the d images whose correctness changed, b lost and c gained; b ~ Binomial(d, p) gives a "
              f"Clopper-Pearson interval for p, and drop = 100 d (2p − 1) / N maps it to points. p is McNemar's "
              f"exact test (two-sided binomial test of b against d/2). The interval treats the test images as a "
              f"sample; it says nothing about seed-to-seed spread, which the across-run tables give as mean ± "
              f"sample std with n.",
              "- Channels are not aligned across seeds (any permutation of a block's channels is the same network), so "
              "per-channel and class-mean figures are per run; block-level statistics are averaged over seeds.", ""]
    return "\n".join(lines)


def _whole_target(g: list[RunAnalysis]) -> str | None:
    """The reliance target that covers every tested block at once: "all", "all selected" or the one block."""
    targets = {row.target for r in g for row in r.reliance}
    for t in ("all", "all selected"):
        if t in targets:
            return t
    singles = [t for t in targets if not t.startswith("all")]
    return singles[0] if len(singles) == 1 else None


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _target_text(target: str) -> str:
    return f"`{target}`" if not target.startswith("all") else f"**{target}**"


def _findings(g: list[RunAnalysis], blocks: list[dict[str, Any]], targets: list[dict[str, Any]],
              constant_std: float, pct: int) -> list[str]:
    """One plain sentence per finding that the data supports."""
    n = len(g)
    runs_txt = "the run" if n == 1 else f"all {n} runs"
    out = []
    const = [b for b in blocks if b["constant"]]
    for b in const:
        s = b["site"]
        if b["constant"] == b["n"]:
            where = f"{runs_txt} (largest per-channel std {b['std_max'].fmt(4, False)}, below {constant_std:g})"
        else:
            flagged = ", ".join(f"seed {seed}: {v:.4f}" for seed, v in b["std_max_runs"] if v < constant_std)
            others = ", ".join(f"{v:.4f}" for _, v in b["std_max_runs"] if v >= constant_std)
            where = (f"{b['constant']} of {b['n']} runs (largest per-channel std {flagged}, below {constant_std:g}; "
                     f"{others} in the other runs)")
        out.append(f"The gate of `{s.name}` ({KIND_PHRASE.get(s.kind, s.kind)}) is nearly the same for every image in "
                   f"{where}: {CARRIER.get(s.kind, CARRIER['other'])}.")
    if not const:
        lo = min(blocks, key=lambda b: b["std_max"].mean)
        out.append(f"No SE block has a constant gate: in every block some channel's gate varies across images with "
                   f"std {constant_std:g} or more (smallest such maximum: {lo['std_max'].fmt(3, False)}, "
                   f"`{lo['site'].name}`).")
    if len(blocks) > 1:
        hi = max(blocks, key=lambda b: b["eta2"].mean)
        lo = min(blocks, key=lambda b: b["eta2"].mean)
        out.append(f"The class explains the largest share of the gate's variance in `{hi['site'].name}` "
                   f"(η² {hi['eta2'].fmt(2, False)}) and the smallest in `{lo['site'].name}` "
                   f"(η² {lo['eta2'].fmt(2, False)}).")
    else:
        b = blocks[0]
        out.append(f"The class explains a share {b['eta2'].fmt(2, False)} of the variance of `{b['site'].name}`'s "
                   f"gate (η²).")
    tmap = {(t["target"], t["replacement"]): t for t in targets}
    whole_key = _whole_target(g)
    for t in targets:
        if t["target"] == whole_key:
            out.append(_reliance_sentence(t, "every SE gate" if len(g[0].sites) > 1 else "the SE gate", pct))
    wm, wo = tmap.get((whole_key, "mean")), tmap.get((whole_key, "one"))
    if wm and wo and wo["pos"] == wo["n"] and wm["drop"].mean < 0.5 * wo["drop"].mean:
        gate = agg([float(r.stats[s.name].mean.mean()) for r in g for s in r.sites])
        out.append(f"Keeping only each gate's test-set average (mean gate {gate.fmt(2, False)}) costs "
                   f"{wm['drop'].fmt(2, False)} points where removing the blocks costs {wo['drop'].fmt(2, False)}: "
                   f"most of what the blocks contribute here is that average per-channel scale, not input-dependent "
                   f"recalibration.")
    singles = [t for t in targets if not t["target"].startswith("all") and t["replacement"] == "mean"]
    if len(singles) > 1:
        top = max(singles, key=lambda t: t["drop"].mean)
        one = tmap.get((top["target"], "one"))
        if any(t["pos"] for t in singles):
            runs_ = "the run" if top["n"] == 1 else f"{top['pos']} of {top['n']} runs"
            out.append(f"Of single blocks, replacing the gate of `{top['target']}` by its mean costs the most: "
                       f"{top['drop'].fmt(2, False)} points of top-1 (its {pct}% interval lies above zero in "
                       f"{runs_})" + (f"; removing the block costs {one['drop'].fmt(2, False)}" if one else "") + ".")
        else:
            out.append(f"No single block's gate, replaced by its mean, lowers top-1 beyond its {pct}% interval in any "
                       f"run (largest drop {top['drop'].fmt(2, False)} points, `{top['target']}`).")
    return out


def _reliance_sentence(t: dict[str, Any], what: str, pct: int) -> str:
    how = ("their test-set means" if what == "every SE gate" else "its test-set mean") if t["replacement"] == "mean" \
        else "1 (removing " + ("the blocks)" if what == "every SE gate" else "the block)")
    head = f"Replacing {what} by {how}"
    if t["n"] == 1:
        x = t["results"][0]
        if x.lost + x.gained == 0:
            return f"{head} changes the prediction's correctness on none of the {x.n:,} test images."
        drop = f"{x.drop:.2f}".replace("-0.00", "0.00")
        ci = f"{pct}% CI {x.ci_low:+.2f} to {x.ci_high:+.2f}"
        if x.excludes_zero:
            verb = f"lowers top-1 by {drop} points" if x.drop > 0 else f"raises top-1 by {-x.drop:.2f} points"
            return f"{head} {verb} ({ci}, McNemar p = {_p(x.p)})."
        return f"{head} gives a top-1 drop of {drop} points whose {ci} includes zero."
    return (f"{head} gives a top-1 drop of {t['drop'].fmt(2, False)} points; the drop's {pct}% interval excludes "
            f"zero in {t['excl']} of {t['n']} runs.")


def _cross_findings(groups: dict[tuple, list[RunAnalysis]]) -> list[str]:
    """Sentences comparing models: only when at least two models have SE blocks."""
    if len(groups) < 2:
        return []
    parts = []
    for g in groups.values():
        t = {(x["target"], x["replacement"]): x for x in _target_summary(g)}
        key = _whole_target(g)
        if (key, "mean") not in t:
            continue
        kinds = sorted({KIND_TEXT.get(s.kind, s.kind) for s in g[0].sites})
        parts.append(f"{t[(key, 'mean')]['drop'].fmt(2)} points in {g[0].model} ({' and '.join(kinds)} SE)")
    if len(parts) < 2:
        return []
    return ["Input-dependent recalibration (every gate replaced by its test-set mean; top-1 drop, mean ± std over n "
            "runs) is worth " + "; ".join(parts) + "."]


# ---------------------------------------------------------------------------------------------------------------
# Figures (matplotlib object API, Agg canvas: no pyplot state)
# ---------------------------------------------------------------------------------------------------------------
SITE_COLORS = {"bridge_after": "#d62728", "bridge_before": "#ff7f0e", "identity": "#9467bd", "residual": "#2ca02c",
               "other": "#7f7f7f"}
SITE_MARKERS = {"bridge_after": "o", "bridge_before": "D", "identity": "^", "residual": "s", "other": "x"}


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    return fig, axes


def _figures(runs: Sequence[RunAnalysis], groups: dict[tuple, list[RunAnalysis]], out: Path) -> list[tuple[str, str]]:
    figs: list[tuple[str, str]] = []
    for key, g in groups.items():
        if not g[0].sites:
            continue
        slug = _gkey_slug(key)
        name = f"gates_{slug}.png"
        _plot_gate_distributions(g, out / name)
        figs.append((name, f"Gate distributions per SE block of {g[0].model} ({len(g)} run"
                           f"{'s' if len(g) > 1 else ''} pooled): box 25–75%, line median, whiskers 1–99%, "
                           f"dots min and max."))
        first = g[0]
        name = f"class_gates_{slug}_s{first.seed}.png"
        shown = _plot_class_means(first, out / name)
        what = "bridge SE blocks" if any(s.on_bridge for s in first.sites) else \
            "SE blocks of the stage-opening blocks (where the other families have their bridges)"
        figs.append((name, f"Class-conditional mean gate minus the overall mean gate, {what} of {first.label} "
                           f"({', '.join(shown)}); channels sorted by overall mean gate."))
    if any(r.sites for r in runs):
        _plot_selectivity(runs, out / "selectivity.png")
        figs.append(("selectivity.png", "Selectivity per SE block and run: mean across-class variance of the "
                                        "class-mean gate against the mean within-class variance (log axes; dotted "
                                        "lines: ratio 1, 0.1, 0.01). Zeros are drawn at the axis floor."))
    if any(r.reliance for r in runs):
        _plot_reliance(groups, out / "reliance.png")
        figs.append(("reliance.png", "Top-1 drop (points) when a block's gate is replaced by its test-set mean (left) "
                                     "or by 1 (right); one dot per run with its 95% interval."))
    return figs


def _plot_gate_distributions(g: list[RunAnalysis], path: Path) -> None:
    sites = g[0].sites
    stats = []
    for s in sites:
        hist = sum(r.stats[s.name].hist for r in g if s.name in r.stats)
        lo = min(r.stats[s.name].lo for r in g if s.name in r.stats)
        hi = max(r.stats[s.name].hi for r in g if s.name in r.stats)
        q = hist_quantiles(hist, (0.01, 0.25, 0.5, 0.75, 0.99), lo, hi)
        stats.append({"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "fliers": [lo, hi],
                      "label": s.short})
    fig, (ax,) = _figure(max(3.5, 0.45 * len(sites) + 1.5), 3.2)
    bp = ax.bxp(stats, showfliers=True, patch_artist=True, widths=0.6,
                flierprops={"marker": ".", "markersize": 4, "markerfacecolor": "k"})
    for patch, s in zip(bp["boxes"], sites):
        patch.set_facecolor(SITE_COLORS.get(s.kind, "#7f7f7f"))
        patch.set_alpha(0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("gate value")
    ax.set_title(f"{g[0].model}: SE gates on the test set", fontsize=9)
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.savefig(path, dpi=110)


def _plot_class_means(r: RunAnalysis, path: Path) -> list[str]:
    sites = [s for s in r.sites if s.on_bridge]
    if not sites:  # residual/identity only: the SE blocks of the blocks that open a stage
        sites = [s for s in r.sites if s.index == 0] or r.sites[:3]
    sites = sites[:6]
    fig, axes = _figure(3.2 * len(sites) + 0.6, 2.8, 1, len(sites))
    for ax, s in zip(axes, sites):
        st = r.stats[s.name]
        order = np.argsort(st.mean)
        dev = (st.class_mean - st.mean[None, :])[:, order]
        lim = float(np.nanmax(np.abs(dev))) if np.isfinite(dev).any() else 0.0
        lim = lim if lim > 0 else 1e-6
        im = ax.imshow(dev, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"{s.short} (mean gate {st.mean.min():.2f}–{st.mean.max():.2f})", fontsize=8)
        ax.set_xlabel("channel (by mean gate)", fontsize=8)
        ax.set_yticks(range(len(r.classes)) if len(r.classes) <= 20 else [])
        if len(r.classes) <= 20:
            ax.set_yticklabels(r.classes, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.85).ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110)
    return [s.short for s in sites]


def _plot_selectivity(runs: Sequence[RunAnalysis], path: Path) -> None:
    from ressenet.models import FAMILY

    fig, (ax,) = _figure(4.6, 3.8)
    pts = [(r, s, r.stats[s.name]) for r in runs for s in r.sites]
    vals = [v for _, _, st in pts for v in (st.within_block, st.between_block) if v > 0]
    floor = (min(vals) / 3) if vals else 1e-8
    seen: set[tuple[str, str]] = set()
    for r, s, st in pts:
        color = FAMILY[r.family].color if r.family in FAMILY else "#7f7f7f"
        lbl = f"{r.family_title}, {KIND_TEXT.get(s.kind, s.kind)}"
        ax.scatter(max(st.within_block, floor), max(st.between_block, floor), c=color,
                   marker=SITE_MARKERS.get(s.kind, "x"), s=22, alpha=0.8,
                   label=lbl if (r.family or "", s.kind) not in seen else None)
        seen.add((r.family or "", s.kind))
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo_, hi_ = ax.get_xlim()
    xs = np.array([lo_, hi_])
    for k in (1.0, 0.1, 0.01):
        ax.plot(xs, k * xs, ls=":", lw=0.8, color="k")
    ax.set_xlim(lo_, hi_)
    ax.set_xlabel("within-class variance of the gate")
    ax.set_ylabel("across-class variance of class means")
    ax.legend(fontsize=6, loc="upper left")
    fig.savefig(path, dpi=110)


def _plot_reliance(groups: dict[tuple, list[RunAnalysis]], path: Path) -> None:
    from ressenet.models import FAMILY

    labels: list[str] = []
    for g in groups.values():
        for r in g:
            for row in r.reliance:
                lbl = f"{r.model}: {row.target if row.target.startswith('all') else _site_short(r, row.target)}"
                if lbl not in labels:
                    labels.append(lbl)
    fig, axes = _figure(9.0, max(2.4, 0.22 * len(labels) + 1.2), 1, 2)
    for ax, how, title in zip(axes, ("mean", "one"), ("gate → its test-set mean", "gate → 1 (removed)")):
        for g in groups.values():
            for j, r in enumerate(g):
                color = FAMILY[r.family].color if r.family in FAMILY else "#7f7f7f"
                for row in r.reliance:
                    if row.replacement != how:
                        continue
                    lbl = f"{r.model}: {row.target if row.target.startswith('all') else _site_short(r, row.target)}"
                    y = labels.index(lbl) + (j - (len(g) - 1) / 2) * 0.12
                    x = row.result
                    ax.errorbar(x.drop, y, xerr=[[x.drop - x.ci_low], [x.ci_high - x.drop]], fmt="o", ms=3,
                                color=color, elinewidth=0.8, capsize=1.5)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if how == "mean" else [], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("top-1 drop (points)")
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)


def _site_short(r: RunAnalysis, name: str) -> str:
    s = next((s for s in r.sites if s.name == name), None)
    return s.short if s else name


# ---------------------------------------------------------------------------------------------------------------
# CLI (wired into src/ressenet/cli.py's build_parser)
# ---------------------------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ressenet analyze RUN_DIR [RUN_DIR ...] --out DIR`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze", help="what the SE blocks of trained runs learned, and how much the network relies on them",
        description="Excitation statistics (gate quantiles, class-conditional gates, selectivity) and reliance "
                    "(top-1 with each SE gate replaced by its mean or by 1) of each run's last.pt on its test split; "
                    "runs of one model are aggregated over seeds. Writes analysis.md, CSVs and PNGs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directory (its last.pt), a checkpoint file, or a folder of run directories")
    p.add_argument("--out", required=True, help="output folder for analysis.md, the CSVs and figures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", default=None, help="default: each checkpoint's")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch (default: 1000 on CUDA, 100 on the CPU)")
    p.add_argument("--block", dest="blocks", action="append", default=None, metavar="NAME",
                   help="restrict the reliance tests to this SE block (module name, e.g. layer2.0.shortcut.se_after; "
                        "repeatable); a block a checkpoint lacks is refused")
    p.add_argument("--no-reliance", dest="reliance", action="store_false",
                   help="skip the reliance tests (two test-set passes per SE block)")
    p.add_argument("--constant-std", type=float, default=CONSTANT_STD,
                   help=f"a gate is a learned per-channel scale when no channel's across-image std reaches this "
                        f"(default {CONSTANT_STD})")
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args: argparse.Namespace) -> int:
    import sys

    from ressenet.engine.config import check_choice

    check_choice("run.device", args.device)

    path = analyze(args.run_dirs, args.out, device=args.device, data_root=args.data_root, cache_dir=args.cache_dir,
                   batch_size=args.batch_size, blocks=args.blocks, reliance=args.reliance,
                   constant_std=args.constant_std, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {path}")
    return 0
