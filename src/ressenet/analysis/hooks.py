"""Forward hooks on :class:`~ressenet.models.layers.SEBlock`: read the gates, replace them at inference.

Nothing in the model code changes: gates are read through the blocks' own ``record`` flag, replacements are hooks
that return the block's input times another gate.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ressenet.analysis.sites import missing_blocks_message, se_modules
from ressenet.errors import RessenetError

__all__ = ["record_gates", "gate_override"]


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
        raise RessenetError(missing_blocks_message(missing, list(modules), what))
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

