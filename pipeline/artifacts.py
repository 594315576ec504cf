"""All artifact I/O: Parquet tables, safetensors tensors, JSON results, model folders.

Every write goes to a temporary name beside the target and is renamed into place, so a
failed or interrupted stage never leaves a half-written artifact. Tables and tensors carry
provenance (config hash, model ids, code version, and a run id shared by the files one stage
run writes together) in their metadata; `fingerprint` reads it back to key what depends on them.
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
import uuid
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


def provenance(settings: Any, models: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """What a stage ran with. Files written together by one stage run pass the same `run_id`."""
    return {
        "config_hash": config_hash(settings),
        "settings": settings,
        "models": models or {},
        "code_version": code_version(),
        "run_id": run_id or uuid.uuid4().hex,
    }


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The identity of an input artifact: its settings hash and the run that wrote it."""
    prov = read_provenance(path)
    if not prov.get("config_hash"):
        raise ArtifactError(f"{path}: no provenance in its metadata; rebuild it with this workflow")
    return {"config_hash": prov["config_hash"], "run_id": prov.get("run_id")}


def check_same_run(*paths: str | os.PathLike) -> None:
    """Fail unless the files were written by one stage run (a table and the tensors that go with it)."""
    prints = [(p, read_provenance(p)) for p in paths]
    keys = {(q.get("config_hash"), q.get("run_id")) for _, q in prints}
    if len(keys) > 1:
        described = ", ".join(f"{p} (config {q.get('config_hash')}, run {q.get('run_id')})" for p, q in prints)
        raise ArtifactError(f"these files were not written by the same stage run and must not be read together: "
                            f"{described}; rerun the stage that writes them")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed. The file gets the
    mode a plain `open` would give it (0666 less the umask), not mkstemp's 0600: on a shared cluster the group
    reads the results as the umask says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def as_umask_says(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the mode a plain `open` would (0666 less the umask) and every folder 0777 less
    it: libraries that write weights (safetensors' `save_file`, `save_pretrained`) leave them 0600 whatever the
    umask, which a cluster's group could not read."""
    mask = _umask()
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


def unwritable(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{folder: why} for each folder where an artifact of `paths` could not be written (atomically, beside itself),
    found by writing a file there: permissions, a read-only mount, a full or missing device. Where the folder does
    not exist yet, the nearest existing folder above it must take the new one."""
    found: dict[str, str] = {}
    tried: set[Path] = set()
    for path in paths:
        folder = Path(path).parent.absolute()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder in tried:
            continue
        tried.add(folder)
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            found[str(folder)] = error.strerror or type(error).__name__
    return found


def _backup_name(path: Path) -> Path:
    return path.parent / f".{path.name}.previous"


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces folder `path`, on failure it is removed.

    A folder cannot be renamed over a non-empty one, so the old folder is first renamed aside and
    removed only once the new one is in place; if the process dies between the two renames, the
    next call (or reader) finds the old folder aside and puts it back, so nothing is ever lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_previous(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    backup = _backup_name(path)
    try:
        yield tmp
        as_umask_says(tmp)
        if path.exists():
            os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            restore_previous(path)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, out_path) -> None:
    """Write a figure atomically in the format its suffix names, then close it."""
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format=Path(out_path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)


def restore_previous(path: str | os.PathLike) -> None:
    """Put back a folder that `atomic_dir` moved aside when it was interrupted before the new one arrived."""
    path = Path(path)
    backup = _backup_name(path)
    if backup.exists():
        if path.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(backup, path)


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
    return checked_table(frame, str(path), required, allow_empty)


def checked_table(frame: pd.DataFrame, where: str, required: Iterable[str] = (), allow_empty: bool = False
                  ) -> pd.DataFrame:
    """`frame` if it holds the `required` columns (and rows, unless `allow_empty`); else an error naming `where`."""
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ArtifactError(
            f"{where}: missing column(s) {missing}; expected at least {list(required)}, found {list(frame.columns)}"
        )
    if frame.empty and not allow_empty:
        raise ArtifactError(f"{where}: table has no rows")
    return frame


def damage(path: str | os.PathLike) -> str | None:
    """Why a Parquet, safetensors or JSON artifact cannot be read (cut off, overwritten, empty), or None when it reads:
    a Parquet file's footer, a safetensors file's header against its size, a JSON file parsed. Other files (and
    folders, by the same test of each such file inside) are not examined."""
    path = Path(path)
    if path.is_dir():
        for inner in sorted(path.rglob("*")):
            why = damage(inner) if inner.is_file() else None
            if why:
                return f"{inner.relative_to(path)}: {why}"
        return None
    if not path.is_file():
        return None
    try:
        if path.suffix == ".parquet":
            pq.read_metadata(path)
        elif path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                header_bytes = handle.read(8)
                if len(header_bytes) < 8:
                    return "shorter than a safetensors header"
                size = int.from_bytes(header_bytes, "little")
                header = json.loads(handle.read(size))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
            if path.stat().st_size < 8 + size + end:
                return f"cut off: {path.stat().st_size} bytes, its header describes {8 + size + end}"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


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


def local_folder(path: str, setting: str) -> str | None:
    """`path` when it names a local folder; None when it is a hub id (owner/name). A path that looks local
    (absolute, ./, ~, or present) but is no folder is refused naming the setting."""
    folder = Path(path).expanduser()
    if not (folder.is_absolute() or path.startswith((".", "~")) or folder.exists()):
        return None
    if not folder.is_dir():
        raise ValueError(f"{setting}: local folder {path} does not exist (a hub id is written owner/name)")
    return str(folder)


RELEASED_SPLIT_PATTERNS = ("data/{split}-*.parquet", "{split}-*.parquet", "{split}.parquet", "{split}/*.parquet")


def released_split_files(folder: str | os.PathLike, split: str, setting: str) -> list[Path]:
    """The Parquet files of one split of a released dataset downloaded to `folder`: the hub's layout
    (`data/{split}-00000-of-00001.parquet`, as `huggingface-cli download --repo-type dataset` writes it), or
    `{split}.parquet`, or `{split}/*.parquet`. None found is refused naming the setting and what was expected."""
    root = Path(folder)
    for pattern in RELEASED_SPLIT_PATTERNS:
        files = sorted(root.glob(pattern.format(split=split)))
        if files:
            return files
    expected = ", ".join(p.format(split=split) for p in RELEASED_SPLIT_PATTERNS)
    raise ArtifactError(f"{setting}: {folder} holds no '{split}' split; expected one of {expected}")


def released_table(source: str, split: str, setting: str, required: Iterable[str] = ()) -> pd.DataFrame:
    """One split of a released label dataset (the paper's Transluce/* tables): a local folder as
    `released_split_files` reads it, or a hub dataset id loaded by `datasets` (its cache, or the hub where reachable)."""
    folder = local_folder(source, setting)
    if folder is None:
        try:
            import datasets

            frame = datasets.load_dataset(source, split=split).to_pandas()
        except Exception as error:  # offline, unknown id, no such split: all say the same to the user
            raise ArtifactError(
                f"{setting}: cannot load split '{split}' of the dataset {source} ({type(error).__name__}: {error}); "
                f"download it where the hub is reachable (huggingface-cli download --repo-type dataset {source} "
                f"--local-dir DIR) and set the folder DIR instead") from error
        where = f"{source} ({split})"
    else:
        files = released_split_files(folder, split, setting)
        frame = pd.concat([read_table(f, allow_empty=True) for f in files], ignore_index=True)
        where = ", ".join(map(str, files))
    return checked_table(frame, f"{setting}: {where}", required)


def released_source(task_section: dict[str, Any] | None, target: str) -> str | None:
    """The released label dataset a task's section (`released_labels`: target key -> source) names for `target`, or
    None when that target's labels are built here."""
    return ((task_section or {}).get("released_labels") or {}).get(target)
