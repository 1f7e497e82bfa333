"""Measured facts that the engine's auto settings follow, one record per measurement, kept apart from the code that
reads them.

``CPU_BF16_COMPILE``: whether compiling the bf16 training step (torch.compile, Inductor's C++ kernels) was faster
than running it eager, by the CPU features it was measured on. ``resolve_compile`` (engine/setup.py) compiles a
long bf16 CPU run when the first fact that matches this CPU says compiling pays, and keeps it eager when a fact says
it does not or none matches (nothing measured: no change from eager). A new measurement
(``python benchmarks/cpu_grid.py --model MODEL --compare-compile``) becomes a new row here; the most specific
features first, since the first row that matches wins. ``depth`` says what was measured; the resolver does not
see the model, so a row holds for every depth until a measurement at another depth disagrees with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CompileFact", "CPU_BF16_COMPILE", "COMPILE_PAYS", "cpu_features", "cpu_description", "bf16_compile_fact"]

# Compiled / eager at or above this: compiling pays. Below it the gain is within the spread of repeated timings
# on a shared machine and the minute or two of compilation is not earned back on a short run.
COMPILE_PAYS = 1.05


@dataclass(frozen=True)
class CompileFact:
    """One measurement of the compiled bf16 step against eager (images/s), on CPUs with all of ``needs`` (names of
    ``/proc/cpuinfo`` flags)."""

    cpu: str
    needs: frozenset[str]
    depth: int
    eager: float
    compiled: float
    source: str

    @property
    def ratio(self) -> float:
        return self.compiled / self.eager

    @property
    def pays(self) -> bool:
        return self.ratio >= COMPILE_PAYS

    def matches(self, features: frozenset[str] | set[str]) -> bool:
        return self.needs <= set(features)


CPU_BF16_COMPILE: tuple[CompileFact, ...] = (
    CompileFact("Intel Xeon with AMX-BF16", frozenset({"amx_bf16"}), depth=20, eager=758.0, compiled=867.0,
                source="the AMX machine's report: compiled bf16 1.14x eager at depth 20 (with AMX switched off, "
                       "bf16 fell to 329 images/s, below fp32's 415)"),
    CompileFact("AMD EPYC with AVX-512 BF16, no AMX", frozenset({"avx512_bf16"}), depth=56, eager=617.4,
                compiled=584.0,
                source="BENCHMARKS.md, compile at depth 56: `python benchmarks/cpu_grid.py --model res_se_net56 "
                       "--compare-compile`, 2 processes x 1 thread, real data, median of 3 rounds (0.90x)"),
    CompileFact("AMD EPYC with AVX-512 BF16, no AMX", frozenset({"avx512_bf16"}), depth=20, eager=743.5,
                compiled=752.0,
                source="BENCHMARKS.md, CPU grids: 752 images/s compiled against 691-796 eager (the middle of that "
                       "range here), one process x 2 threads, synthetic batch"),
)


def _onednn_isa_cap() -> str:
    """oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``), upper case; empty when
    not set. A cap below AMX switches AMX off for PyTorch's CPU kernels while /proc/cpuinfo still lists it."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()


def cpu_features() -> frozenset[str]:
    """The bf16-relevant features of this CPU as oneDNN may use them: ``/proc/cpuinfo`` flags and torch's own
    probes (``avx512_bf16``, ``amx_tile``, ``amx_bf16``, ...), without the AMX ones when ``ONEDNN_MAX_CPU_ISA`` caps
    oneDNN below AMX."""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    except OSError:
        pass
    try:  # private helpers of torch.cpu (ATen's cpuinfo): the same facts where /proc/cpuinfo is missing
        import torch.cpu as tcpu

        if getattr(tcpu, "_is_avx512_bf16_supported", lambda: False)():
            flags.add("avx512_bf16")
        if getattr(tcpu, "_is_amx_tile_supported", lambda: False)():
            flags |= {"amx_tile", "amx_bf16"}  # every CPU with AMX tiles so far has AMX-BF16
    except Exception:
        pass
    cap = _onednn_isa_cap()
    if cap and cap != "ALL" and "AMX" not in cap:
        flags = {f for f in flags if not f.startswith("amx")}
    return frozenset(flags)


def cpu_description() -> str:
    """This CPU as a run's provenance names it: the model and the bf16 path its kernels take, e.g. "AMD EPYC 9R14
    (avx512_bf16, no AMX)" (bf16 results differ by a few hundredths between AMX and AVX-512 BF16 kernels)."""
    model = "CPU model unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                     model)
    except OSError:
        pass
    feats = cpu_features()
    path = "amx_bf16" if "amx_bf16" in feats else "avx512_bf16, no AMX" if "avx512_bf16" in feats else "no native bf16"
    return f"{' '.join(model.split())} ({path})"


def bf16_compile_fact(features: frozenset[str] | None = None) -> CompileFact | None:
    """The first fact of ``CPU_BF16_COMPILE`` that applies to a CPU with ``features`` (this CPU's by default), or
    None when nothing was measured on such a CPU."""
    features = cpu_features() if features is None else features
    return next((f for f in CPU_BF16_COMPILE if f.matches(features)), None)
