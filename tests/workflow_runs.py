"""Running the workflow from tests: Snakemake in a subprocess, its plan, config overrides, and copies of prepared
models and finished runs, so that tests share one preparation instead of repeating it (copies are never changed in
place: the original stays as it was made)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY_CONFIG = REPO / "tests" / "config_tiny.yaml"


def snakemake(workdir: Path, *args: str, configfiles=(), timeout: int = 600, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    command = ["timeout", "-k", "10", str(timeout), *SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               # One thread a job, two jobs at a time: a tiny model's job is mostly one-threaded start-up (Python,
               # torch), so two of them keep both cores busy where one two-thread job at a time left one idle.
               "--cores", "2", "--max-threads", "1", *args,  # targets before --configfile, which takes every value after it
               "--configfile", str(TINY_CONFIG), *map(str, configfiles)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def override(tmp_path: Path, name: str, settings: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings))
    return path


def copy_tree(source: Path, destination: Path, link_from: int = 1 << 20) -> Path:
    """`source` copied to `destination` with its modification times (so Snakemake finds every output up to date).
    Files of `link_from` bytes or more are hard links: the workflow replaces an artifact by renaming a new file over
    it, never by writing into it, so the original is never changed through a link."""
    def copy(src: str, dst: str) -> str:
        if os.path.getsize(src) >= link_from:
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=copy, symlinks=True, dirs_exist_ok=True)
    return destination


def session_folder(tmp_path_factory) -> Path:
    """The temporary folder of the whole test session: with pytest-xdist, the one every worker's folder is in."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` run once per test session, across pytest-xdist workers: the first worker to ask builds it
    under a file lock in the session's shared folder, the others wait for it and reuse it (it is never changed
    after: tests that run more in it work on a copy). A failed build leaves nothing, so the next asker retries."""
    root = session_folder(tmp_path_factory)
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.write_text("")
    return folder


class PreparedModels:
    """Each model of the test settings (config.yaml and tests/config_tiny.yaml) prepared once per test session (across
    pytest-xdist workers: under a file lock in a shared folder) by the function the prepare_model rule runs, and
    copied into the workflow folders that need it."""

    def __init__(self, folder: Path):
        self.folder = folder
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        self.specs = config["models"] | yaml.safe_load(TINY_CONFIG.read_text()).get("models", {})

    def path(self, key: str) -> Path:
        from pipeline.models import prepare_model

        out = self.folder / key
        with FileLock(str(self.folder / f"{key}.lock")):
            if not out.exists():  # prepare_model writes the folder whole or not at all
                prepare_model(key, self.specs, out)
        return out

    def into(self, workdir: Path, *keys: str) -> Path:
        for key in keys:
            copy_tree(self.path(key), workdir / "resources" / "models" / key)
        return workdir
