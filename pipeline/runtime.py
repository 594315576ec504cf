"""What every stage does on entry: send its output to the Snakemake log, size torch's threads, choose the CPU's
matrix-product library, and assemble its settings (result settings from the rule's params, execution settings from
the config)."""

from __future__ import annotations

import contextlib
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

    PyTorch's default, MKL, runs a generic code path on AMD CPUs: on these EPYC cores (2 threads) a 600 x 640 by
    640 x 2,048 product takes 9.0 ms with MKL against 4.5 ms with oneDNN's AVX-512 kernels, and one Gemma 3 270M LoRA
    training step 4.1 s against 2.3 s, with the same loss to six decimals (2026-12-03). torch routes fp32 products to
    oneDNN only under `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`, which *allows* oneDNN to round inputs to
    bf16 where it has fast bf16 kernels (AMX); on these CPUs it computes in fp32 (measured). So a probe product decides: oneDNN is kept only where it equals
    the fp64 product to fp32 precision (relative error < 1e-5; a bf16 product is off by ~1e-3), MKL otherwise.
    One trap: oneDNN runs a linear layer on a strided 3-D input through a reference kernel (hundreds of times
    slower); the one place Hugging Face models pass one, the output layer after `logits_to_keep`'s slice, is made
    contiguous by pipeline.models.contiguous_output_layer (tests/test_models.py).
    `choice` (else PIPELINE_CPU_MATMUL, else "auto"): "mkl" keeps MKL (the default before 2026-12-03; one product
    differs by summation order only, a whole training run is another draw of its recipe)."""
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
