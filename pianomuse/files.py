"""Atomic writes, the one home of the temp-then-rename pattern: a file or a folder is written under a temporary name
beside its path, then renamed over it, so that a reader (or a rerun after a kill) never sees half of it.

    atomic_write(path, write)       one file, written by `write(temporary_path)`   (write_json, write_parquet_atomic)
    atomic_folder(path, write)      one folder, replaced whole                       (datasets, the MAESTRO download)
    staged_folder(path)             several files moved into a folder that may hold others (samples, reports)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)`, then rename the temporary file over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file private (0600); the finished file gets the mode any new file gets here.
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_json(obj: object, path: str | Path) -> None:
    """`obj` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def atomic_folder(path: str | Path, write: Callable[[Path], Path | None]) -> Path:
    """Call `write(temporary_folder)` (an empty folder beside `path`), then rename the folder over `path`, replacing
    what was there. `write` may return a folder inside the temporary one to rename instead (an archive's top folder).
    On failure nothing at `path` changes and the temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's folder is private; the finished one is not
    try:
        result = write(staging) or staging
        shutil.rmtree(path, ignore_errors=True)
        os.replace(result, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


@contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir` to write into; on success its files are moved into `out_dir` (made if
    missing, other files in it kept), on failure it is removed, so a half-written set of files never appears."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield staging
        out_dir.mkdir(exist_ok=True)
        for path in staging.iterdir():
            target = out_dir / path.name
            if target.is_dir() and path.is_dir():
                shutil.rmtree(target)  # a folder of a previous run is replaced whole, not merged into
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
