"""Shared fixtures: a random-weight tiny Llama with the real SmolLM2 tokenizer, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: every test is offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, base_config) -> Path:
    from pipeline.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_model("tiny", base_config["models"], out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from pipeline.models import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, base_config) -> Path:
    """A random-weight Gemma 3 text model (its embedding layer scales rows by sqrt(width))."""
    from pipeline.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "tiny_gemma"
    specs = base_config["models"] | {"tiny_gemma": base_config["models"]["tiny"] | {"architecture": "gemma3"}}
    prepare_model("tiny_gemma", specs, out)
    return out


@pytest.fixture(scope="session")
def smollm_dir(tmp_path_factory, base_config) -> Path:
    """The real SmolLM2-135M-Instruct, prepared from its wheel (about a minute): for slow tests only."""
    from pipeline.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "smollm"
    prepare_model("smollm", base_config["models"], out)
    return out
