"""What every stage does on entry: send its output to the Snakemake log, size torch's threads, and
assemble its settings (result settings from the rule's params, execution settings from the config)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def stage(log_path: str | None, threads: int = 1) -> Iterator[None]:
    import torch

    torch.set_num_threads(usable_threads(threads))
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=log)
            raise


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
