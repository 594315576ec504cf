"""All artifact I/O: Parquet tables, safetensors tensors, JSON results, model folders.

Every write goes to a temporary name beside the target and is renamed into place, so a
failed or interrupted stage never leaves a half-written artifact. Tables and tensors carry
provenance (config hash, model ids, code version) in their metadata.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__

PROVENANCE_KEY = "pipeline.provenance"


class ArtifactError(ValueError):
    """An input artifact is missing, empty, corrupt or lacks expected fields."""


def config_hash(settings: Any) -> str:
    """A short stable hash of the settings a stage ran with."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the checkout (and '-dirty' when modified)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return f"{__version__}+{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def provenance(settings: Any, models: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "config_hash": config_hash(settings),
        "settings": settings,
        "models": models or {},
        "code_version": code_version(),
    }


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces folder `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(frame: pd.DataFrame, path: str | os.PathLike, prov: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[PROVENANCE_KEY.encode()] = json.dumps(prov, default=str).encode()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike, required: Iterable[str] = (), allow_empty: bool = False) -> pd.DataFrame:
    """Read a Parquet table, failing with a message that names the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise ArtifactError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ArtifactError(
            f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {list(frame.columns)}"
        )
    if frame.empty and not allow_empty:
        raise ArtifactError(f"{path}: table has no rows")
    return frame


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            blob = (handle.metadata() or {}).get(PROVENANCE_KEY, "{}")
        return json.loads(blob)
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(PROVENANCE_KEY.encode(), b"{}"))


def write_tensors(tensors: dict[str, Any], path: str | os.PathLike, prov: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={PROVENANCE_KEY: json.dumps(prov, default=str)})


def read_tensors(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{path}: not a readable safetensors file ({error})") from error


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ArtifactError(f"{path}: file not found") from error
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from error
