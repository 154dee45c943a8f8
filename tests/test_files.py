"""The atomic writes of pianomuse.files: a finished file or folder appears whole, a failed write changes nothing and
leaves no temporary file behind, and what appears has the permissions any new file gets here."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pianomuse.files import atomic_folder, atomic_write, current_umask, staged_folder, write_json


def fail(*_):
    raise OSError("disk full")


def test_atomic_write_replaces_the_file_and_a_failure_keeps_the_old_one(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json({"n": 1}, path)
    assert json.loads(path.read_text()) == {"n": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()

    def half(tmp):
        Path(tmp).write_text("{")
        fail()

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert json.loads(path.read_text()) == {"n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


@pytest.fixture
def previous(tmp_path) -> Path:
    """A folder a previous run wrote."""
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.arrow").write_text("old")
    return out


def test_atomic_folder_replaces_the_whole_folder(previous, tmp_path):
    out = previous

    def write(folder: Path):
        (folder / "new.arrow").write_text("new")

    assert atomic_folder(out, write) == out
    assert [p.name for p in out.iterdir()] == ["new.arrow"]  # nothing of the previous folder is kept
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_atomic_folder_can_rename_a_folder_inside_the_temporary_one(tmp_path):
    def unpack(folder: Path) -> Path:
        (folder / "archive.zip").write_text("zip")
        (folder / "unpacked" / "top").mkdir(parents=True)
        (folder / "unpacked" / "top" / "data.csv").write_text("csv")
        return folder / "unpacked" / "top"

    out = atomic_folder(tmp_path / "maestro", unpack)
    assert [p.name for p in out.iterdir()] == ["data.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maestro"]  # the zip went with the temporary folder


def test_a_failed_atomic_folder_keeps_the_previous_one_and_no_temporary_folder(previous, tmp_path):
    out = previous

    def half(folder: Path):
        (folder / "new.arrow").write_text("ha")
        fail()

    with pytest.raises(OSError, match="disk full"):
        atomic_folder(out, half)
    assert [p.name for p in out.iterdir()] == ["old.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_staged_folder_moves_files_in_beside_others_or_nothing(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    with staged_folder(out) as staging:
        (staging / "sample-0.mid").write_text("a")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sample-0.mid"]
    with pytest.raises(OSError, match="disk full"), staged_folder(out) as staging:
        (staging / "sample-1.mid").write_text("b")
        fail()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sample-0.mid"]
    assert sorted(os.listdir(tmp_path)) == ["samples"]
