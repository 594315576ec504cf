"""Run a training function in one process, or in several under torchrun (one per GPU, or gloo on CPU).

The process count comes from the job's resources: the GPUs Snakemake (or SLURM) gave the job,
or `training.cpu_processes` where there is no GPU. With more than one, the call is written to a
spec file and `python -m torch.distributed.run --standalone` starts the processes, each running
`python -m pipeline.launch SPEC`; DeepSpeed and the plain loop both read torchrun's variables.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.runtime import cpu_matmul


def process_count(gpus: int, cpu_processes: int) -> int:
    """GPUs the job holds (capped by those visible), or the CPU process count where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return max(1, min(int(gpus or 1), torch.cuda.device_count()))
    return max(1, int(cpu_processes))


def _stream(stream):
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def _call(target: str, kwargs: dict[str, Any]):
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def run(target: str, kwargs: dict[str, Any], processes: int, threads: int = 1, timeout: float | None = None):
    """Call `target` ("package.module.function") with `kwargs`, in `processes` torchrun processes if > 1."""
    if processes <= 1:
        return _call(target, kwargs)
    with tempfile.TemporaryDirectory(prefix="launch.") as scratch:
        spec = Path(scratch) / "spec.pkl"
        spec.write_bytes(pickle.dumps({"target": target, "kwargs": kwargs}))
        env = os.environ | {"OMP_NUM_THREADS": str(max(1, threads // processes)),
                            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                        os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "pipeline.launch", str(spec)]
        print(f"launching {processes} training processes: {' '.join(command)}", file=sys.stderr, flush=True)
        sys.stdout.flush(), sys.stderr.flush()
        # Into the stage's log where sys.stdout/err were redirected to it; else inherited.
        completed = subprocess.run(command, env=env, timeout=timeout, stdout=_stream(sys.stdout), stderr=_stream(sys.stderr))
        if completed.returncode != 0:
            raise RuntimeError(f"{processes} torchrun processes running {target} failed (exit {completed.returncode}); "
                               f"their output is above")
    return None


def main(spec_path: str) -> None:
    import torch

    spec = pickle.loads(Path(spec_path).read_bytes())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cpu_matmul()
    _call(spec["target"], spec["kwargs"])


if __name__ == "__main__":
    main(sys.argv[1])
