import json

import pandas as pd
import pytest
import torch

from pipeline.artifacts import (ArtifactError, atomic_dir, read_provenance, read_table, read_tensors, write_json,
                                write_table, write_tensors, provenance)


def test_table_round_trip_with_provenance_and_datasets(tmp_path):
    frame = pd.DataFrame({"layer": [[0, 1], [2, 3]], "is_different": [True, False],
                          "patch_position": [{"orig_pos": 1, "orig_text_token": "a"}, {"orig_pos": 2, "orig_text_token": "b"}]})
    path = tmp_path / "t.parquet"
    write_table(frame, path, provenance({"x": 1}, {"target": "m"}))
    back = read_table(path, required=["layer"])
    assert back["layer"].map(list).tolist() == [[0, 1], [2, 3]]
    prov = read_provenance(path)
    assert prov["settings"] == {"x": 1} and prov["models"] == {"target": "m"} and len(prov["config_hash"]) == 16
    assert prov["code_version"].startswith("0.1.0")
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert loaded.num_rows == 2 and loaded[1]["patch_position"]["orig_pos"] == 2


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.parquet"
    bad = pd.DataFrame({"x": [object()]})  # pyarrow cannot convert this
    with pytest.raises(Exception):
        write_table(bad, path, {})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_bad_tables_get_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing.parquet: file not found"):
        read_table(tmp_path / "missing.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(ArtifactError, match="corrupt.parquet: not a readable Parquet file"):
        read_table(corrupt)
    empty = tmp_path / "empty.parquet"
    write_table(pd.DataFrame({"a": pd.Series([], dtype=int)}), empty, {})
    with pytest.raises(ArtifactError, match="empty.parquet: table has no rows"):
        read_table(empty)
    with pytest.raises(ArtifactError, match=r"missing column\(s\) \['b'\]"):
        read_table(empty, required=["a", "b"], allow_empty=True)


def test_tensors_and_json(tmp_path):
    path = tmp_path / "v.safetensors"
    write_tensors({"v": torch.arange(6.0).view(2, 3)}, path, {"config_hash": "abc"})
    assert torch.equal(read_tensors(path)["v"], torch.arange(6.0).view(2, 3))
    assert read_provenance(path)["config_hash"] == "abc"
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ArtifactError, match="bad.safetensors: not a readable safetensors file"):
        read_tensors(tmp_path / "bad.safetensors")
    write_json({"a": 1}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def test_atomic_dir_never_loses_both_folders(tmp_path, monkeypatch):
    """A crash between moving the old folder aside and moving the new one in leaves the old one recoverable."""
    import os

    from pipeline import artifacts

    target = tmp_path / "explainer"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("new")
    monkeypatch.setattr(artifacts.os, "replace", real_replace)
    assert (target / "weights").read_text() == "old"  # put back at once
    # Had the process died outright, the old folder would sit aside; the next write (or reader) restores it.
    real_replace(target, tmp_path / ".explainer.previous")
    artifacts.restore_previous(target)
    assert (target / "weights").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["explainer"]


def test_files_of_one_stage_run_share_a_run_id(tmp_path):
    from pipeline.artifacts import check_same_run, fingerprint

    together = provenance({"x": 1})
    write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet", together)
    write_tensors({"v": torch.zeros(1)}, tmp_path / "v.safetensors", together)
    check_same_run(tmp_path / "t.parquet", tmp_path / "v.safetensors")
    write_tensors({"v": torch.zeros(1)}, tmp_path / "w.safetensors", provenance({"x": 1}))  # same settings, other run
    with pytest.raises(ArtifactError, match="not written by the same stage run"):
        check_same_run(tmp_path / "t.parquet", tmp_path / "w.safetensors")
    assert fingerprint(tmp_path / "t.parquet") != fingerprint(tmp_path / "w.safetensors")
    write_table(pd.DataFrame({"a": [1]}), tmp_path / "bare.parquet", {})
    with pytest.raises(ArtifactError, match="bare.parquet: no provenance"):
        fingerprint(tmp_path / "bare.parquet")


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_artifacts_are_readable_as_the_umask_says(tmp_path, umask, file_mode, dir_mode):
    """Not mkstemp's 0600: on a shared cluster the group reads the results when the umask lets it."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from pipeline.artifacts import atomic_dir, write_json

    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "result.json")
        write_table(pd.DataFrame({"x": [1]}), tmp_path / "table.parquet", provenance({}))
        with atomic_dir(tmp_path / "folder") as folder:
            (folder / "inside.txt").write_text("x")
            (folder / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(folder / "sub" / "weights.safetensors"))  # 0600 whatever the umask
    finally:
        os.umask(old)
    for name in ("result.json", "table.parquet", "folder/inside.txt", "folder/sub/weights.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    for name in ("folder", "folder/sub"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == dir_mode, name
