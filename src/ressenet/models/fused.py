"""Horizontal fusion: N CIFAR ResNets of one depth and block type computed as one network.

Wang et al., "Horizontally Fused Training Array" (HFTA, MLSys 2021, arXiv:2102.02344). Each member owns a block of
channels: an activation of the fused network is (B, N*C, H, W) and member i's channels are [i*C, (i+1)*C). Then

* every convolution is one grouped convolution with ``groups=N`` (member i's filters see only its own channels);
* batch norm over the N*C channels *is* each member's batch norm (its statistics are per channel);
* the SE blocks and the head are batched matrix products over the members;
* the training loss is the sum of the members' losses, so each member's parameters receive exactly the gradient of
  its own loss, and SGD with momentum and weight decay, being elementwise, updates each member as its own optimizer
  would.

Members may be of different families (models/families.py): the fused network is their superset. Where some members
have an SE block and others do not, the gates of the members without one are replaced by exactly 1; a bridge that
some members lack (the no-bridge ablation) contributes exactly 0 for them. The slots of parameters a member does not
have hold zeros, receive zero gradients and are never copied back into the member.

The result is not bit-identical to separate runs: a grouped convolution and a batched matrix product sum in other
orders than the dense kernels of one member (tests/test_fused_model.py states the tolerance).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ressenet.models.layers import SEBlock, Shortcut, ShortcutA
from ressenet.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["FusedResNet"]


@dataclass(frozen=True)
class _Conv:
    conv: str  # state-dict prefix of the convolution, e.g. "layer2.0.conv1"
    bn: str  # of the batch norm after it
    stride: int
    padding: int


@dataclass(frozen=True)
class _Block:
    branch: tuple[_Conv, ...]  # the residual branch: conv + BN each, ReLU between them
    se: str | None  # SE at the end of the residual branch (SE-ResNet), when any member has one
    shortcut: str  # prefix of the shortcut module, e.g. "layer2.0.shortcut"
    kind: str  # "identity", "A" (subsample + zero channels), "B" (conv1x1 + BN), "none" (no member has this bridge)
    stride: int
    pad: tuple[int, int]  # option A's zero channels below and above
    se_before: str | None  # SE on the shortcut input (an ablation), when any member has one
    se_after: str | None  # SE on the shortcut output (Res-SE-Net), when any member has one


def _safe(key: str) -> str:
    return key.replace(".", "__")  # module attribute names cannot hold dots


class FusedResNet(nn.Module):
    """The members (``ResNet`` instances of one depth, block type, shortcut option and width) as one network.

    ``forward`` takes (B, N*3, H, W), member i's images in channels [3i, 3i+3), and returns logits (N, B, K).
    Construction copies the members' weights and buffers in; :meth:`copy_to` writes them back.
    """

    def __init__(self, members: Sequence[ResNet]) -> None:
        super().__init__()
        _check_members(members)
        self.n = len(members)
        states = [m.state_dict() for m in members]
        param_names = set().union(*({k for k, _ in m.named_parameters()} for m in members))
        self.bn_modules: dict[str, tuple[float, float]] = {}  # name -> (momentum, eps)
        sites: set[str] = set()  # every SE block and shortcut of any member
        for mem in members:
            for name, mod in mem.named_modules():
                if isinstance(mod, nn.BatchNorm2d):
                    if mod.momentum is None:
                        raise ValueError(f"{name}: batch norm with a cumulative average (momentum None) is not fused")
                    self.bn_modules.setdefault(name, (mod.momentum, mod.eps))
                elif isinstance(mod, SEBlock | Shortcut):
                    sites.add(name)
        self.shapes: dict[str, torch.Size] = {}
        for sd in states:
            for k, t in sd.items():
                self.shapes.setdefault(k, t.shape)
        for k in self.shapes:
            fused = self.stack(k, [sd.get(k) for sd in states])
            if k in param_names:
                self.register_parameter(_safe(k), nn.Parameter(fused))
            else:
                self.register_buffer(_safe(k), fused)
        self.param_keys = [k for k in self.shapes if k in param_names]
        # Sites that some members lack are masked for those members (a gate of 1, a bridge of 0). The masks are
        # buffers, looked up by name when used: .to(device) replaces buffer objects.
        self.masked: set[str] = set()
        for site in sorted(sites):
            flags = [site in dict(mem.named_modules()) for mem in members]
            if not all(flags):
                self.register_buffer(f"mask__{_safe(site)}", torch.tensor(flags), persistent=False)
                self.masked.add(site)
        self.blocks = _structure(members, set(sites))

    # -- stacking ---------------------------------------------------------------------------------------------
    def stack(self, key: str, tensors: Sequence[Tensor | None]) -> Tensor:
        """The fused tensor of ``key`` from the members' tensors (``None``: a member without it, filled with zeros).

        Convolution weights and batch-norm vectors are concatenated along their channel dimension (N*C, ...);
        everything else (linear layers, counters) is stacked (N, ...).
        """
        like = next(t for t in tensors if t is not None)
        full = [t if t is not None else torch.zeros_like(like) for t in tensors]
        fused = torch.stack([t.detach() for t in full])
        if like.dim() == 4 or (like.dim() == 1 and key.rsplit(".", 1)[0] in self.bn_modules):
            fused = fused.flatten(0, 1)
        return fused.clone()

    def member_tensor(self, fused: Tensor, key: str, i: int) -> Tensor:
        """Member ``i``'s part of a fused tensor of ``key`` (a tensor of the same layout as :meth:`stack`'s)."""
        return fused.reshape(self.n, *self.shapes[key])[i]

    def tensor(self, key: str) -> Tensor:
        return getattr(self, _safe(key))

    def mask(self, site: str) -> Tensor | None:
        """(N,) bool: which members have the SE block or shortcut ``site``; None when all have it."""
        return getattr(self, f"mask__{_safe(site)}") if site in self.masked else None

    @torch.no_grad()
    def copy_to(self, members: Sequence[ResNet]) -> None:
        """Writes every member's own weights and buffers back into it (the slots it lacks are not copied)."""
        for i, m in enumerate(members):
            for k, t in m.state_dict(keep_vars=True).items():
                t.copy_(self.member_tensor(self.tensor(k), k, i))

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self._bn("bn1", self._conv("conv1", x, 1, 1)))
        for b in self.blocks:
            x = self._block(b, x)
        feats = x.mean(dim=(2, 3))  # global average pool: (B, N*C)
        feats = feats.view(feats.shape[0], self.n, -1).transpose(0, 1)  # (N, B, C)
        return self._linear("fc", feats)  # (N, B, K)

    def _conv(self, key: str, x: Tensor, stride: int, padding: int) -> Tensor:
        return F.conv2d(x, self.tensor(f"{key}.weight"), None, stride, padding, 1, self.n)

    def _bn(self, key: str, x: Tensor) -> Tensor:
        momentum, eps = self.bn_modules[key]
        if self.training:
            self.tensor(f"{key}.num_batches_tracked").add_(1)
        return F.batch_norm(x, self.tensor(f"{key}.running_mean"), self.tensor(f"{key}.running_var"),
                            self.tensor(f"{key}.weight"), self.tensor(f"{key}.bias"), self.training, momentum, eps)

    def _linear(self, key: str, x: Tensor) -> Tensor:
        """Each member's own linear layer on its own rows: x (N, B, in) -> (N, B, out)."""
        return torch.baddbmm(self.tensor(f"{key}.bias").unsqueeze(1), x, self.tensor(f"{key}.weight").transpose(1, 2))

    def _se(self, key: str, x: Tensor) -> Tensor:
        b = x.shape[0]
        s = x.mean(dim=(2, 3)).view(b, self.n, -1).transpose(0, 1)  # squeeze: (N, B, C)
        gate = torch.sigmoid(self._linear(f"{key}.fc2", F.relu(self._linear(f"{key}.fc1", s))))
        mask = self.mask(key)
        if mask is not None:  # members without this SE block: a gate of exactly 1
            gate = torch.where(mask[:, None, None], gate, 1.0)
        return x * gate.transpose(0, 1).reshape(b, -1, 1, 1)

    def _block(self, b: _Block, x: Tensor) -> Tensor:
        out = x
        for j, c in enumerate(b.branch):
            out = self._bn(c.bn, self._conv(c.conv, out, c.stride, c.padding))
            if j < len(b.branch) - 1:
                out = F.relu(out)
        if b.se is not None:
            out = self._se(b.se, out)
        if b.kind == "none":
            return F.relu(out)
        return F.relu(out + self._shortcut(b, x))

    def _shortcut(self, b: _Block, x: Tensor) -> Tensor:
        if b.se_before is not None:
            x = self._se(b.se_before, x)
        if b.kind == "A":
            x = x[:, :, :: b.stride, :: b.stride]
            bsz, _, h, w = x.shape
            x = F.pad(x.reshape(bsz, self.n, -1, h, w), (0, 0, 0, 0, *b.pad)).reshape(bsz, -1, h, w)
        elif b.kind == "B":
            x = self._bn(f"{b.shortcut}.proj.1", self._conv(f"{b.shortcut}.proj.0", x, b.stride, 0))
        if b.se_after is not None:
            x = self._se(b.se_after, x)
        mask = self.mask(b.shortcut)
        if mask is not None:  # members without this bridge: it contributes exactly 0
            channels = mask[:, None].expand(self.n, x.shape[1] // self.n).reshape(1, -1, 1, 1)
            x = torch.where(channels, x, 0.0)
        return x


def _check_members(members: Sequence[ResNet]) -> None:
    if not members:
        raise ValueError("a fused network needs at least one member")
    for m in members:
        if not isinstance(m, ResNet):
            raise ValueError(f"fused members must be ressenet ResNet models, got {type(m).__name__}")

    def options(m: ResNet) -> dict[str, object]:
        shortcuts = {type(s.proj).__name__ for s in m.modules() if isinstance(s, Shortcut) and s.is_bridge}
        return {"depth": m.depth, "block type": m.block_name, "head shape": tuple(m.fc.weight.shape),
                "shortcut option": shortcuts or None,
                "SE reduction": {s.reduction for s in m.modules() if isinstance(s, SEBlock)} or None}

    ref = options(members[0])
    for m in members[1:]:
        for key, value in options(m).items():
            if value is not None and ref[key] is not None and value != ref[key]:
                raise ValueError(f"fused members must share the {key}: {ref[key]} and {value}")
            if ref[key] is None:
                ref[key] = value


def _structure(members: Sequence[ResNet], sites: set[str]) -> tuple[_Block, ...]:
    """The blocks of the superset, in order, from the members' modules."""
    blocks = []
    ref = members[0]
    for li, layer in enumerate((ref.layer1, ref.layer2, ref.layer3), 1):
        for bi, blk in enumerate(layer):
            prefix = f"layer{li}.{bi}"
            assert isinstance(blk, BasicBlock | Bottleneck)
            convs = [n for n in ("conv1", "conv2", "conv3") if hasattr(blk, n)]
            branch = tuple(_Conv(f"{prefix}.{n}", f"{prefix}.bn{n[-1]}", getattr(blk, n).stride[0],
                                 getattr(blk, n).padding[0]) for n in convs)
            sc = next((s for m in members if isinstance(s := m.get_submodule(prefix).shortcut, Shortcut)), None)
            if sc is None:  # every member lacks this bridge
                kind, stride, pad = "none", 1, (0, 0)
            elif not sc.is_bridge:
                kind, stride, pad = "identity", 1, (0, 0)
            elif isinstance(sc.proj, ShortcutA):
                kind, stride, pad = "A", sc.proj.stride, (sc.proj.pad_lo, sc.proj.pad_hi)
            else:
                kind, stride, pad = "B", sc.proj[0].stride[0], (0, 0)

            def site(name: str) -> str | None:
                return name if name in sites else None

            blocks.append(_Block(branch, site(f"{prefix}.se"), f"{prefix}.shortcut", kind, stride, pad,
                                 site(f"{prefix}.shortcut.se_before"), site(f"{prefix}.shortcut.se_after")))
    return tuple(blocks)
