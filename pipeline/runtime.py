"""What every stage does on entry: send its output to the Snakemake log, size torch's threads, and
assemble its settings (result settings from the rule's params, execution settings from the config)."""

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
