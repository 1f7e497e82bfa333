"""The table of measured facts that compile auto follows for bf16 on the CPU (engine/measured.py)."""
from __future__ import annotations

import pytest
import torch

from ressenet.engine import measured
from ressenet.engine import setup as engine_setup
from ressenet.engine.setup import CPU_COMPILE_MIN_ITERS, resolve_compile

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})


def test_the_recorded_facts_say_compiling_bf16_pays_with_amx_only():
    amx = measured.bf16_compile_fact(AMX)
    assert amx is not None and amx.pays and amx.ratio == pytest.approx(867 / 758) and amx.depth == 20
    avx = measured.bf16_compile_fact(AVX512_BF16)
    assert avx is not None and not avx.pays
    assert measured.bf16_compile_fact(frozenset({"avx2"})) is None  # nothing measured there
    # Most specific first: every row's features are not a superset of an earlier row's (it would never be read).
    rows = measured.CPU_BF16_COMPILE
    assert all(not later.needs > earlier.needs for i, earlier in enumerate(rows) for later in rows[i + 1:])


@pytest.mark.parametrize("features, compiled", [(AMX, True), (AVX512_BF16, False), (frozenset(), False)],
                         ids=["amx-bf16", "avx512-bf16", "neither"])
def test_compile_auto_compiles_long_bf16_cpu_runs_where_it_was_measured_to_pay(monkeypatch, features, compiled):
    cpu, long = torch.device("cpu"), CPU_COMPILE_MIN_ITERS
    monkeypatch.setattr(measured, "cpu_features", lambda: features)
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: True)
    assert resolve_compile(None, "auto", cpu, iters=long, precision="bf16") == (compiled, "default")
    # Unchanged around it: short runs, DDP, explicit flags, fp32 and a resumed run's recorded choice.
    assert resolve_compile(None, "auto", cpu, iters=long - 1, precision="bf16") == (False, "default")
    assert resolve_compile(None, "auto", cpu, world_size=2, iters=long, precision="bf16") == (False, "default")
    assert resolve_compile(False, "auto", cpu, iters=long, precision="bf16") == (False, "default")
    assert resolve_compile(True, "auto", cpu, iters=long, precision="bf16") == (True, "default")
    assert resolve_compile(None, "auto", cpu, iters=long, precision="fp32") == (True, "default")
    assert resolve_compile(None, "auto", cpu, iters=long, precision="bf16", recorded=False) == (False, "default")
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: False)  # no C++ compiler: eager whatever pays
    assert resolve_compile(None, "auto", cpu, iters=long, precision="bf16") == (False, "default")


def test_cpu_features_drop_amx_when_onednn_is_capped_below_it(monkeypatch):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    found = measured.cpu_features()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert measured.cpu_features() == found
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert measured.cpu_features() == {f for f in found if not f.startswith("amx")}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert isinstance(engine_setup.cpu_bf16_compile_pays(), bool)  # the real probe answers without raising
