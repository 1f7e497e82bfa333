"""Setting a run up: each automatic choice (device, precision, memory format, compile) resolved once into
:class:`Settings`, the data (:class:`RunData`) and the model. Shared by training and evaluation.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.cpu
from torch import nn

from ressenet import __version__
from ressenet.data import ImageDataset, load_datasets, normalization, train_val_split
from ressenet.data.constants import DATASET_INFO
from ressenet.engine.config import Config
from ressenet.engine.measured import bf16_compile_fact, cpu_description
from ressenet.errors import RessenetError
from ressenet.models import create_model

__all__ = ["resolve_device", "resolve_precision", "cpu_has_native_bf16", "resolve_compile", "cpu_compiler_found",
           "cpu_bf16_compile_pays", "CPU_COMPILE_MIN_ITERS", "check_cpu_compiler", "resolve_channels_last",
           "resolve_eval_batch_size", "autocast_context", "RunData", "load_data", "build_model", "versions", "data_fingerprint", "Settings",
           "resolve_settings"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``--device`` as a torch.device: auto is this process's GPU when PyTorch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RessenetError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX-512 BF16 or AMX), where oneDNN's bf16 kernels beat
    fp32; elsewhere they emulate bf16 and run several times slower (BENCHMARKS.md, "CPU precision")."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:  # private helpers of torch.cpu (ATen's cpuinfo); if they moved, read the kernel's flags instead
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name)) or _cpuinfo_bf16()
    except Exception:
        return _cpuinfo_bf16()


def _cpuinfo_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device, recorded: str | None = None) -> str:
    """The autocast precision of a run: as given, else (auto) bf16 on a GPU that supports it and on a CPU with
    native bf16 arithmetic (:func:`cpu_has_native_bf16`), fp32 elsewhere. ``recorded``: what a resumed run chose
    when it started, kept so that it does not switch arithmetic half way (another machine may resolve auto
    otherwise)."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise RessenetError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
        return precision
    if recorded in ("fp32", "bf16", "fp16"):
        return recorded
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# A CPU run in fp32 compiles by default from this many iterations on: compiling costs a minute or two and then
# each step is faster (BENCHMARKS.md, "CPU precision and compilation"), which pays for itself after about 1,200
# iterations; 2,000 keeps short runs (tests, the `quick` preset's 1,000) eager. bf16 on the CPU compiles from the
# same length only where a measurement on such a CPU says it pays (engine/measured.py: with AMX-BF16); elsewhere it
# stays eager (with AVX-512 BF16 alone compiling it gained nothing).
CPU_COMPILE_MIN_ITERS = 2_000


def cpu_bf16_compile_pays() -> bool:
    """Whether compiling the bf16 step was measured faster than eager on a CPU like this one
    (:data:`ressenet.engine.measured.CPU_BF16_COMPILE`); False where nothing was measured."""
    fact = bf16_compile_fact()
    return fact is not None and fact.pays


def cpu_compiler_found() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: Dynamo runs on this Python and Inductor finds a C++
    compiler (``g++``/``clang++``, or ``$CXX``)."""
    try:  # imported here: loading Inductor costs seconds, and only a CPU run's compile decision needs it
        import torch._dynamo
        from torch._inductor.cpp_builder import get_cpp_compiler

        if not torch._dynamo.is_dynamo_supported():
            return False
        get_cpp_compiler()  # raises when no compiler is found
        return True
    except Exception:  # a private API: if it moved or failed, a compiler is not known to be there
        return False


def resolve_compile(flag: bool | None, mode: str, device: torch.device, world_size: int = 1, *,
                    iters: int = 0, precision: str = "fp32", recorded: str | bool | None = None) -> tuple[bool, str]:
    """(compile?, torch.compile mode) for a run of ``iters`` iterations in ``precision``.

    ``iters`` is the run's whole length, not what is left when resuming, and ``recorded`` is what a resumed run's
    ``config.yaml`` says it chose (a mode, or False): the choice must not change on resume, or a resumed run would
    switch kernels (compiled and eager differ in the last bits) and stop matching an uninterrupted one.

    Auto (``flag`` None): on a single CUDA device, compiled with CUDA graphs (these launch-bound nets train several
    times faster so: BENCHMARKS.md). On the CPU, compiled (Inductor's C++ kernels) in fp32 when the run has at least
    ``CPU_COMPILE_MIN_ITERS`` iterations and a C++ compiler is found; in bf16 likewise where compiling it was
    measured to pay on such a CPU (:func:`cpu_bf16_compile_pays`), eager elsewhere. Eager under DDP.
    """
    if flag is None and recorded is not None:
        flag = recorded is not False
        if flag and mode == "auto" and isinstance(recorded, str):
            mode = recorded
    if flag is None:
        if world_size != 1:
            flag = False
        elif device.type == "cuda":
            flag = True
        else:
            flag = (device.type == "cpu" and iters >= CPU_COMPILE_MIN_ITERS
                    and (precision == "fp32" or (precision == "bf16" and cpu_bf16_compile_pays()))
                    and cpu_compiler_found())
    if mode == "auto":
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    return flag, mode


def check_cpu_compiler(asked: bool | None, compile_on: bool, device: torch.device) -> None:
    """An explicit ``--compile`` on a CPU without a C++ compiler, refused in one line before a deep Inductor error
    (auto already looked for one)."""
    if compile_on and asked and device.type == "cpu" and not cpu_compiler_found():
        raise RessenetError("torch.compile on the CPU needs a C++ compiler (g++ or clang++, or $CXX) and a Python "
                            "that torch.compile supports, and none was found; install one or pass --no-compile")


def resolve_channels_last(flag: bool | None, device: torch.device, recorded: bool | None = None) -> bool:
    """Whether to train channels-last: as given, else what a resumed run recorded, else on for CUDA and the CPU."""
    # channels-last lets cuDNN use tensor-core kernels without transposes; on the CPU oneDNN's blocked
    # convolutions also prefer NHWC (measured in benchmarks/train_throughput.py).
    if flag is None and isinstance(recorded, bool):
        return recorded
    return device.type in ("cuda", "cpu") if flag is None else flag


def resolve_eval_batch_size(n: int | None, device: torch.device) -> int:
    """The evaluation batch: as given, else 1000 on CUDA and 100 on the CPU (cache-sized; BENCHMARKS.md)."""
    return n if n else (1000 if device.type == "cuda" else 100)


def autocast_context(precision: str, device: torch.device) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class RunData:
    """What a run trains and evaluates on (:func:`load_data`): its splits, input normalisation and fingerprint."""

    train: ImageDataset
    val: ImageDataset | None  # held out of train (``data.val_split``), or None
    test: ImageDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str  # :func:`data_fingerprint` of the three splits

    @property
    def classes(self) -> list[str]:
        """The class names, in label order."""
        return list(self.train.classes)

    def split(self, name: str) -> ImageDataset:
        """The split called ``name`` ("train", "val" or "test"); raises ValueError for a missing one."""
        ds = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if ds is None:
            raise ValueError(f"no {name!r} split here (the splits are train, test and, with data.val_split, val)")
        return ds


def load_data(cfg: Config) -> RunData:
    """Train (and optional validation) and test splits as ImageDatasets, plus the normalisation constants."""
    d = cfg.data
    extra = {}
    if DATASET_INFO[d.dataset].generated:  # made at the sizes asked for, not read and then cut
        extra = {"train_size": d.train_limit or 50_000, "test_size": d.test_limit or 10_000}
    splits = load_datasets(d.dataset, d.data_root, download=d.download, cache_dir=d.cache_dir, **extra)
    train_ds, test_ds = (_limit(splits["train"], d.train_limit), _limit(splits["test"], d.test_limit))
    val_ds = None
    if d.val_split:
        # A fixed split seed: every run seed holds out the same images, as He et al.'s 45k/5k split.
        train_ds, val_ds = train_val_split(train_ds, val_size=d.val_split, seed=0)
    for name, ds in (("test", test_ds), ("validation", val_ds)):
        if ds is not None and len(ds) == 0:  # found now, not after the last iteration
            raise RessenetError(f"the {name} split of {d.dataset} at {d.data_root or 'the default root'} is empty; "
                                f"check the data folder (it needs {name}/<class>/ images) or --set data.test_limit")
    if len(train_ds) < cfg.optim.batch_size:
        raise RessenetError(f"the training split has {len(train_ds)} images, fewer than one batch of "
                            f"{cfg.optim.batch_size}; lower --batch-size")
    mean, std = normalization(d.dataset, d.normalization, train=train_ds) if d.normalization == "dataset" \
        else normalization(d.dataset, d.normalization)
    return RunData(train_ds, val_ds, test_ds, mean, std, data_fingerprint(train_ds, val_ds, test_ds))


def data_fingerprint(*splits: Any) -> str:
    """SHA-256 (first 16 hex digits) of the decoded pixels, labels and class names of the splits a run uses.

    It identifies the data by content, wherever its folder is: resume and the grid's skip compare it, so a run is
    never continued, or counted as done, on other data. Hashing the bytes in place keeps it cheap beside decoding.
    """
    h = hashlib.sha256()
    for ds in splits:
        if ds is None:
            h.update(b"none")
            continue
        h.update(repr((tuple(ds.images.shape), list(ds.classes))).encode())
        h.update(memoryview(ds.images.contiguous().numpy()).cast("B"))
        h.update(memoryview(ds.labels.contiguous().numpy()).cast("B"))
    return h.hexdigest()[:16]


def _limit(ds: Any, n: int) -> Any:
    """A fixed random subset of ``n`` images (folders are sorted by class, so "the first n" would be one class)."""
    if not n or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return ds.subset(idx)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """``cfg.model`` from the registry with ``num_classes`` outputs (refused when the config names another count)."""
    m = cfg.model
    if m.num_classes is not None and m.num_classes != num_classes:
        raise RessenetError(f"model.num_classes={m.num_classes} but the dataset has {num_classes} classes; "
                            f"drop --num-classes to take it from the data")
    return create_model(m.name, num_classes=num_classes, shortcut=m.shortcut, se_reduction=m.se_reduction,
                        layout=m.layout)


def versions(device: torch.device) -> dict[str, Any]:
    """The software and machine a run used: versions, git commit, device, threads, host, CPU."""
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    # A copy of the tree without .git (a device machine, a cluster's scratch) can be told its commit.
    commit = commit or os.environ.get("RESSENET_GIT_COMMIT") or None
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"ressenet": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "git_commit": commit, "device": str(device), "device_name": dev_name, "threads": torch.get_num_threads(),
            "host": platform.node(), "cpu": cpu_description()}


@dataclass(frozen=True)
class Settings:
    """A run's settings, resolved once before anything is built and written as they are to ``config.yaml``'s
    ``meta`` block (:meth:`meta`): the software and machine (:func:`versions`), what auto chose (precision,
    channels-last, compile: a resumed run keeps these, ``RunDir.recorded_choices``), the data, and for a member of a
    fused group, the group."""

    ressenet: str
    python: str
    torch: str
    git_commit: str | None
    device: str
    device_name: str
    threads: int
    host: str
    cpu: str  # model and bf16 path (engine/measured.py): bf16 results differ in the last digits between them
    precision: str
    channels_last: bool
    world_size: int
    data: str  # the training split's description
    data_fingerprint: str
    mean: list[float]  # the input normalisation, which `ressenet export` records
    std: list[float]
    compile: str | bool  # torch.compile's mode, or False: eager
    fused_with: list[str] | None = None
    fused_mechanism: str | None = None

    @property
    def torch_device(self) -> torch.device:
        """``device`` as a torch.device."""
        return torch.device(self.device)

    def meta(self) -> dict[str, Any]:
        """The ``meta`` block of ``config.yaml`` (a separate run's has no ``fused_*`` keys)."""
        return {k: v for k, v in asdict(self).items() if v is not None or not k.startswith("fused_")}


def resolve_settings(cfg: Config, device: torch.device, data: RunData, recorded: dict[str, Any], *,
                     world_size: int = 1, compiles: bool = True, fused_with: list[str] | None = None,
                     fused_mechanism: str | None = None) -> Settings:
    """Every automatic choice of a run of ``cfg`` on ``device``, made once. ``recorded``: what a resumed run chose
    when it started (``RunDir.recorded_choices``), kept; ``compiles``: whether the compile decision applies (a fused
    mechanism that replays CUDA graphs has none)."""
    precision = resolve_precision(cfg.run.precision, device, recorded.get("precision"))
    compile_mode: str | bool = False
    if compiles:
        on, mode = resolve_compile(cfg.run.compile, cfg.run.compile_mode, device, world_size, iters=cfg.optim.iters,
                                   precision=precision, recorded=recorded.get("compile"))
        check_cpu_compiler(cfg.run.compile, on, device)
        compile_mode = mode if on else False
        was = recorded.get("compile")
        if was is not None and cfg.run.compile is not None and (was is not False) != on:
            warnings.warn(f"this run started {'compiled' if was is not False else 'eager'} and resumes "
                          f"{'compiled' if on else 'eager'}, as --{'' if on else 'no-'}compile asks: the kernels "
                          f"change, so its remaining steps will not match an uninterrupted run to the last bit; config.yaml's "
                          f"meta.compile now records {compile_mode!r}", stacklevel=2)
    return Settings(**versions(device), precision=precision,
                    channels_last=resolve_channels_last(cfg.run.channels_last, device, recorded.get("channels_last")),
                    world_size=world_size, data=data.train.description, data_fingerprint=data.fingerprint,
                    mean=[float(v) for v in data.mean], std=[float(v) for v in data.std], compile=compile_mode,
                    fused_with=fused_with, fused_mechanism=fused_mechanism)
