"""Every command README.md and docs/*.md show runs as written: each Snakemake command plans without error (`-n`) in a
clean checkout, each `python -m pipeline...` module answers `--help` and runs on the files it names."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from documented import REPO, Command, documented_commands

pytestmark = pytest.mark.slow
COMMANDS = {command.text: command for command in documented_commands()}  # each once, at its first place
# Run for real instead of planned, and where: `--report` needs a finished run (tests/test_report.py opens one).
NOT_PLANNED = {"--report": "tests/test_report.py builds the report of a finished run"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The repository's tracked files as a fresh clone has them, with this machine's .venv and the corpus sdist that
    envs/setup.sh puts beside them."""
    folder = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-cf", "-", "--null", "-T", "-"], cwd=REPO, input=tracked, check=True,
                   stdout=open(folder / ".files.tar", "wb"))
    subprocess.run(["tar", "-xf", ".files.tar"], cwd=folder, check=True)
    (folder / ".venv").symlink_to(REPO / ".venv")
    (folder / "resources").mkdir(exist_ok=True)
    if (REPO / "resources" / "corpus").exists():
        (folder / "resources" / "corpus").symlink_to(REPO / "resources" / "corpus")
    return folder


def shell(command: str, folder: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_docs_show_commands_and_the_readme_its_two():
    assert len(COMMANDS) >= 10
    sources = {c.source.split(":")[0] for c in COMMANDS.values()}
    assert "README.md" in sources
    assert any(text.startswith(".venv/bin/snakemake --cores all results/act_patch/") for text in COMMANDS)


@pytest.mark.parametrize("text", sorted(t for t in COMMANDS if "snakemake" in t.split()[0]))
def test_each_documented_snakemake_command_plans(text, checkout):
    command: Command = COMMANDS[text]
    skip = [why for flag, why in NOT_PLANNED.items() if flag in text.split()]
    if skip:
        pytest.skip(skip[0])
    filled = command.filled()
    run = shell(filled if "--unlock" in filled.split() else f"{filled} -n", checkout)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Traceback" not in output, f"{command.source}: {text}\n{output[-3000:]}"


@pytest.mark.parametrize("text", sorted(t for t in COMMANDS if "python" in t.split()[0]))
def test_each_documented_python_command_runs(text, checkout):
    command: Command = COMMANDS[text]
    words = shlex.split(command.filled())
    module = words[words.index("-m") + 1]
    helped = shell(f".venv/bin/python -m {module} --help", checkout)
    assert helped.returncode == 0 and "usage" in helped.stdout.lower(), f"{command.source}: {helped.stderr[-2000:]}"
    arguments = words[words.index("-m") + 2:]
    if arguments and all((checkout / a).is_file() or not a.startswith(("results/", "work/", "tests/")) for a in
                         arguments) and any((checkout / a).is_file() for a in arguments):
        ran = shell(command.filled(), checkout)
        assert ran.returncode == 0, f"{command.source}: {text}\n{ran.stdout[-2000:]}{ran.stderr[-2000:]}"


def test_the_rules_reference_lists_every_rule_as_the_workflow_defines_it():
    """docs/rules.md names every rule, those the rule files make in loops included, with its file and outputs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rules_reference", REPO / "workflow" / "rules_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "rules.md").read_text() == module.reference(), \
        "docs/rules.md is stale: python workflow/rules_reference.py > docs/rules.md"
