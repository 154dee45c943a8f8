"""Atomic file writes: a file is written under a temporary name in its folder, then renamed over its path, so that a
reader (or a rerun after a kill) never sees half a file."""

from __future__ import annotations

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
