"""bench/: what travels to a lent GPU machine is derived from the installed environment, not kept by hand."""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_packages  # noqa: E402


def test_gpu_packages_carry_every_dependency_the_image_lacks_and_the_model_stack_at_our_versions():
    image = gpu_packages.image_packages()
    assert {"torch", "numpy", "transformers", "pytest"} <= image and len(image) > 150  # the list was read whole
    pins = dict(line.split("==") for line in gpu_packages.carried(image))
    assert all(metadata.version(name) == version for name, version in pins.items())  # this .venv's versions
    needed = gpu_packages.closure(gpu_packages.PROJECT, gpu_packages.EXTRAS)
    assert {"nnsight", "snakemake", "deepspeed", "eai-sparsify"} <= needed
    for name in needed - {canonicalize_name(gpu_packages.PROJECT)}:  # each one either travels or is there already
        assert name in pins or name in image or name in gpu_packages.UNUSED_THERE or name.startswith("nvidia-"), name
    assert gpu_packages.MODEL_STACK <= set(pins)  # in the image too, but at other versions
    assert not {"torch", "triton", "numpy"} & set(pins) and not any(n.startswith("nvidia-") for n in pins)
    # An extra's dependencies count only where the extra is asked for: deepspeed is reached through [deepspeed].
    assert "deepspeed" not in gpu_packages.closure(gpu_packages.PROJECT)
