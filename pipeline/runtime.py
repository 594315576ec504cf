"""What every stage does on entry: send its output to the Snakemake log, size torch's threads, choose the CPU's
matrix-product library, and assemble its settings (result settings from the rule's params, execution settings from
the config)."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def stage(log_path: str | None, threads: int = 1) -> Iterator[None]:
    import torch

    torch.set_num_threads(usable_threads(threads))
    library = cpu_matmul()
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"fp32 matrix products on the CPU: {library}", flush=True)
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=log)
            raise


def warn(message: str) -> None:
    """A warning the user must see: in the job's log and on the console that started the job (Snakemake's own
    terminal, or the cluster job's output), not in the log alone."""
    import sys

    line = f"WARNING: {message}"
    print(line, file=sys.stderr, flush=True)
    if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        print(line, file=sys.__stderr__, flush=True)


MATMUL_ENV = "PIPELINE_CPU_MATMUL"


def cpu_matmul(choice: str | None = None) -> str:
    """Send fp32 matrix products on the CPU through oneDNN where that is exact on this CPU; returns the library used.

    PyTorch's default, MKL, runs a generic code path on AMD CPUs; oneDNN's AVX-512 kernels run about twice as fast
    there, with the same loss to six decimals (the figures: docs/results.md). torch routes fp32 products to oneDNN
    only under `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`, which *allows* oneDNN to round inputs to bf16
    where it has fast bf16 kernels (AMX). So a probe product decides: oneDNN is kept only where it equals the fp64
    product to fp32 precision (relative error < 1e-5; a bf16 product is off by ~1e-3), MKL otherwise.
    One trap: oneDNN runs a linear layer on a strided 3-D input through a reference kernel (hundreds of times
    slower); the one place Hugging Face models pass one, the output layer after `logits_to_keep`'s slice, is made
    contiguous by pipeline.models.contiguous_output_layer (tests/test_models.py).
    `choice` (else PIPELINE_CPU_MATMUL, else "auto"): "mkl" keeps MKL (one product differs by summation order only, a
    whole training run is another draw of its recipe)."""
    import torch

    backend = torch.backends.mkldnn
    choice = (choice or os.environ.get(MATMUL_ENV) or "auto").strip().lower()
    if choice not in ("auto", "mkl"):
        raise ValueError(f"{MATMUL_ENV}={choice!r}: expected 'auto' (oneDNN where it is exact) or 'mkl'")
    if choice == "mkl" or not backend.is_available():
        backend.matmul.fp32_precision = "ieee"
        return "mkl"
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(96, 640, generator=generator), torch.randn(640, 512, generator=generator)
    exact = left.double() @ right.double()
    backend.matmul.fp32_precision = "bf16"
    error = float(((left @ right).double() - exact).norm() / exact.norm())
    if error < 1e-5:
        return "onednn"
    backend.matmul.fp32_precision = "ieee"
    return "mkl"


PRECISIONS = ("auto", "fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16 / AMX, ARM's BF16 dot products


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def product_rate(dtype, size: tuple[int, int, int] = (1024, 640, 2048), repeats: int = 5) -> float:
    """GFLOP/s of an [m, k] x [k, n] matrix product in `dtype` on this process's threads: the best of `repeats`
    (a busy machine slows each the same way; the best is the chip's own rate)."""
    import time

    import torch

    m, k, n = size
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(m, k, generator=generator).to(dtype)
    right = torch.randn(k, n, generator=generator).to(dtype)
    left @ right  # first call: kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best / 1e9


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> dict:
    """Whether bf16 pays on this CPU: it has native bf16 dot products (BF16_FLAGS) and a bf16 probe product runs at
    least 1.3x the fp32 one's rate (fp32 through the library cpu_matmul chose). Without native bf16 the products are
    emulated and never faster, so nothing is timed."""
    import torch

    native = sorted(set(BF16_FLAGS) & cpu_flags())
    if not native:
        return {"native": [], "faster": False, "why": "no native bf16 dot products (avx512_bf16, amx_bf16)"}
    cpu_matmul()
    fp32, bf16 = product_rate(torch.float32), product_rate(torch.bfloat16)
    return {"native": native, "fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1),
            "faster": bf16 >= 1.3 * fp32, "why": f"bf16 {bf16:.0f} against fp32 {fp32:.0f} GFLOP/s"}


def resolve_precision(setting: str | None) -> str:
    """fp32 or bf16 for a stage's `precision` setting: as given, or for `auto` bf16 on a GPU that supports it and on a
    CPU where bf16 products are faster (cpu_bf16), fp32 elsewhere."""
    setting = (setting or "auto").lower()
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: expected one of {PRECISIONS}")
    if setting != "auto":
        return setting
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16()["faster"] else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[resolve_precision(precision)]


def visible_gpus() -> int:
    """GPUs this machine shows (CUDA_VISIBLE_DEVICES where set, else `nvidia-smi -L`), without importing torch."""
    import shutil
    import subprocess

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in found.stdout.splitlines()) if found.returncode == 0 else 0


def usable_threads(threads: int) -> int:
    """`threads`, but no more than the CPUs this process may run on (a SLURM allocation, taskset, a container)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(int(threads), available))


def stage_settings(params, config: dict, stage_name: str) -> tuple[dict, dict]:
    """(what the stage runs with, what its artifacts' provenance records). `params` holds the rule's
    `settings` and `code` (see pipeline/stages.py); execution-only settings are read from `config`."""
    from pipeline import stages

    settings = dict(params.settings)
    return stages.run_settings(settings, config, stage_name), settings | {"code": params.code}


def named_inputs(inputs, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """A rule's named inputs as {name: path}: those starting with `prefix` (which is removed), minus `exclude`."""
    return {name[len(prefix):]: str(path) for name, path in inputs.items()
            if name.startswith(prefix) and name not in exclude and isinstance(path, str)}
