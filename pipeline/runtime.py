"""What every stage does on entry: send its output to the Snakemake log and size torch's threads."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def stage(log_path: str | None, threads: int = 1) -> Iterator[None]:
    import torch

    torch.set_num_threads(max(1, int(threads)))
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
