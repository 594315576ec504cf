"""Modules loaded on first use, so that parsing the workflow (the Snakefile, its input functions and the task
declarations they read) does not pay for importing torch: about 1.5-2 s of every `snakemake` call."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """`name` itself where it is imported already; otherwise a module that imports itself at its first attribute."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def no_grad(function):
    """`@torch.no_grad()` for modules that load torch lazily (the decorator would import it at definition)."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(function):  # the context must hold while the generator runs, not while it is made
        @functools.wraps(function)
        def generator(*args, **kwargs):
            import torch

            with torch.no_grad():
                yield from function(*args, **kwargs)

        return generator

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return wrapper
