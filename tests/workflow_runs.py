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


def snakemake_command(workdir: Path, *args: str, configfiles=(), timeout: int = 600, env: dict | None = None
                      ) -> tuple[list[str], dict]:
    """The command line and environment of a Snakemake run of the test settings in `workdir`."""
    command = ["timeout", "-k", "10", str(timeout), *SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               # One thread a job, two jobs at a time: a tiny model's job is mostly one-threaded start-up (Python,
               # torch), so two of them keep both cores busy where one two-thread job at a time left one idle.
               "--cores", "2", "--max-threads", "1", *args,  # targets before --configfile, which takes every value after it
               "--configfile", str(TINY_CONFIG), *map(str, configfiles)]
    return command, os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)} | (env or {})


def snakemake(workdir: Path, *args: str, configfiles=(), timeout: int = 600, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    command, env = snakemake_command(workdir, *args, configfiles=configfiles, timeout=timeout, env=env)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)


def job_processes(workdir: Path, script: str) -> list[int]:
    """The pids of the processes running a rule's script (`workflow/scripts/{script}`) for a run in `workdir`:
    Snakemake runs each job's script as `python {workdir}/.snakemake/scripts/tmpXXXX.{script}`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace").startswith(str(workdir / ".snakemake" / "scripts")) and
               a.decode(errors="replace").endswith(f".{script}") for a in args):
            found.append(int(proc.name))
    return found


def signal_job_when(workdir: Path, script: str, ready, signum: int, timeout: float = 300) -> int:
    """Once `ready()` is true, send `signum` to the processes running `script` in `workdir` (as a cluster's time limit
    does); returns how many got it. Gives up after `timeout` seconds."""
    import signal as signals
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            pids = job_processes(workdir, script)
            for pid in pids:
                os.kill(pid, signum or signals.SIGTERM)
            if pids:
                return len(pids)
        time.sleep(0.05)
    return 0


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


def modes_unlike(folder: Path, umask: int) -> list[str]:
    """Files and folders the workflow wrote under `folder` whose mode is not what the umask gives a plain `open` or
    `mkdir` (Snakemake's own .snakemake/ state left out)."""
    import stat

    wrong = []
    for path in folder.rglob("*"):
        if ".snakemake" in path.relative_to(folder).parts or path.is_symlink():
            continue
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if stat.S_IMODE(path.stat().st_mode) != expected:
            wrong.append(f"{path.relative_to(folder)} {oct(stat.S_IMODE(path.stat().st_mode))}")
    return wrong
